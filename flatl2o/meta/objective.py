"""The flatness terms of the meta-objective (Yang et al., AISTATS 2023).

  meta_loss = mean_t f(x_t) + alpha * mean_t R_hessian(x_t) + beta * mean_t R_entropy(x_t)

Each term is evaluated at every inner iterate x_t of the unroll, on the same
minibatch loss f_t that gave x_t's gradient, and reaches the meta-parameters
through x_t(meta_params):

- R_hessian: tr(H)/n by Hutchinson (`hessian_probes` Rademacher probes), the
  mean curvature per coordinate, so alpha means the same for any model size;
  or the top eigenvalue by power iteration or Lanczos (`power_iters` hvps),
  which does not grow with n.
- R_entropy: gamma/2 ||x_t - sg(mu_t)||^2 with mu_t from K Langevin chains of L
  steps; its gradient w.r.t. x_t is the local-entropy gradient gamma (x_t - mu_t),
  on the same scale as the loss gradient (mu is held constant, as Entropy-SGD
  treats its Langevin estimate of mu; Chaudhari et al., ICLR 2017).

`when` switches the terms on for every unroll, or only for the first or second
half of each episode's truncations. `add_to_inner_loss` also adds the term to
the loss whose gradient the learned optimizer sees.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from flatl2o import flatness
from flatl2o.meta.config import EntropyTerm, FlatnessTerm, HessianTerm, RegularizerConfig
from flatl2o.optimizers import base

# The name under which the Langevin mean is saved by the rematerialised scan
# body, so the backward pass does not run the chains a second time.
ENTROPY_MEAN = "flatl2o_entropy_mean"


def term(config: FlatnessTerm | RegularizerConfig | None, loss_fn, params,
         key: jax.Array) -> jax.Array:
  """coefficient * R(params) for one optimizee's minibatch loss `loss_fn`."""
  if isinstance(config, RegularizerConfig):
    config = config.term()
  if isinstance(config, HessianTerm):
    if config.estimator == "trace":
      value = (flatness.hessian_trace(loss_fn, params, key, config.probes)
               / base.num_coordinates(params))
    elif config.estimator == "eigenvalue":
      value = flatness.top_hessian_eigenvalue(loss_fn, params, key, config.power_iters)
    else:
      value = flatness.lanczos_top_eigenvalue(loss_fn, params, key, config.power_iters)
    return config.alpha * value
  if isinstance(config, EntropyTerm):
    mu = flatness.langevin_mean(
        loss_fn, params, key, gamma=config.gamma, num_chains=config.chains,
        num_steps=config.steps, step_size=config.step_size, noise=config.noise)
    mu = checkpoint_name(jax.lax.stop_gradient(mu), ENTROPY_MEAN)
    return config.beta * flatness.local_entropy_surrogate(params, mu, config.gamma)
  return jnp.zeros((), jnp.float32)


def weight(config: FlatnessTerm | RegularizerConfig | None, episode_step: jax.Array,
           num_inner_steps: int) -> jax.Array:
  """1.0 where the terms are on at this point of the episode, else 0.0."""
  if config is None or config.when == "always":
    return jnp.float32(1.0)
  first_half = episode_step < num_inner_steps // 2
  on = first_half if config.when == "first_half" else jnp.logical_not(first_half)
  return on.astype(jnp.float32)
