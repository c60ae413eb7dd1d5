"""How much the flatness term weighs in the meta-gradient: `gradient_ratio`.

The meta-loss of one truncation is a loss term plus the flatness term
(`flatl2o.meta.objective`),

  L(phi) = L_loss(phi) + L_flat(phi),   L_flat = coefficient * mean_t R(x_t(phi)),

and meta-training follows grad L = grad L_loss + grad L_flat. A coefficient can
only change what is learned where ||grad L_flat|| is not negligible against
||grad L_loss||; `gradient_ratio` measures both norms along one episode of the
given meta-parameters (a fresh meta-batch, every truncation in turn, one
forward pass and two backward passes each) and reports the ratio of their
means. It is what the study records at each point of a coefficient sweep.

Example:

  config = MetaTrainConfig(regularizer=RegularizerConfig(kind="hessian", alpha=10.0))
  norms = gradient_ratio(L2ODM(), task, config, meta_params, jax.random.key(0))
  norms["ratio"]   # ||grad L_flat|| / ||grad L_loss||, averaged over the episode
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flatl2o.meta import estimators
from flatl2o.meta.config import MetaTrainConfig, UnrollConfig


@functools.partial(jax.jit, static_argnames=("lopt", "config"))
def _norms(lopt, config: UnrollConfig, task, meta_params, state, key):
  estimator = estimators.get("truncated", lopt, task, config)

  def parts(p):
    loss, (new_state, traces) = estimator.unroll(p, state, key)
    flat = jnp.mean(traces["regularizer"])
    return jnp.stack([loss - flat, flat]), new_state

  _, pullback, new_state = jax.vjp(parts, meta_params, has_aux=True)
  (grad_loss,) = pullback(jnp.array([1.0, 0.0], jnp.float32))
  (grad_flat,) = pullback(jnp.array([0.0, 1.0], jnp.float32))
  return optax.global_norm(grad_loss), optax.global_norm(grad_flat), new_state


def gradient_ratio(lopt, task, config: MetaTrainConfig, meta_params, key: jax.Array,
                   num_truncations: int | None = None) -> dict[str, float]:
  """Norms of the loss term's and the flatness term's meta-gradients, and their ratio.

  Args:
    lopt: the learned-optimizer architecture.
    task: the optimizee of meta-training.
    config: the meta-training configuration (its regularizer and coefficient,
      unroll, meta-batch); always estimated by backpropagation on one device.
    meta_params: where to measure (e.g. the selected meta-parameters).
    key: draws the meta-batch and each truncation's batches.
    num_truncations: truncations measured from the episode's start (default:
      the whole episode, `num_inner_steps / unroll_length`).

  Returns:
    {"loss_grad_norm", "regularizer_grad_norm" (each averaged over the
    truncations), "ratio" (regularizer / loss; 0 without a flatness term,
    NaN when a norm is not finite)}.
  """
  config = dataclasses.replace(config, estimator="truncated", num_devices=1)
  unroll = config.unroll_config()
  count = num_truncations or config.num_inner_steps // config.unroll_length
  init_key, run_key = jax.random.split(key)
  state = estimators.get("truncated", lopt, task, unroll).init(meta_params, init_key)
  loss_norms, flat_norms = [], []
  for i in range(count):
    loss_norm, flat_norm, state = _norms(lopt, unroll, task, meta_params, state,
                                         jax.random.fold_in(run_key, i))
    loss_norms.append(float(loss_norm))
    flat_norms.append(float(flat_norm))
  loss_mean, flat_mean = float(np.mean(loss_norms)), float(np.mean(flat_norms))
  finite = np.isfinite(loss_mean) and np.isfinite(flat_mean) and loss_mean > 0
  return {"loss_grad_norm": loss_mean, "regularizer_grad_norm": flat_mean,
          "ratio": flat_mean / loss_mean if finite else float("nan")}
