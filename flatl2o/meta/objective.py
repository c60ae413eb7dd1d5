"""The flatness term of the meta-objective (Yang et al., AISTATS 2023).

  meta_loss = mean_t f(x_t) + mean_t w_t * R(x_t)

R is a registered flatness term (`flatl2o.meta.terms`: the built-in
`HessianTerm` alpha * R_hessian and `EntropyTerm` beta * R_entropy, or a
user's). It is evaluated at every inner iterate x_t of the unroll, on the same
minibatch loss f_t that gave x_t's gradient, and reaches the meta-parameters
through x_t(meta_params). The weight w_t (`weight`) is 1, or 0 outside the
half of each episode that a term's `when` field names; a term's
`add_to_inner_loss` field also adds it to the loss whose gradient the learned
optimizer sees (`flatl2o.meta.inner`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from flatl2o.meta.config import RegularizerConfig
from flatl2o.meta.terms import ENTROPY_MEAN  # pylint: disable=unused-import  (inner's remat policy)


def term(config: Any, loss_fn, params, key: jax.Array) -> jax.Array:
  """The weighted flatness term at `params` for one optimizee's minibatch loss.

  Args:
    config: a flatness term, a `RegularizerConfig`, or None (no term).
    loss_fn: params -> scalar, the inner loss on this step's minibatch.
    params: the optimizee's parameters at this iterate.
    key: PRNG key for the term's estimator.

  Returns:
    A scalar: `config(loss_fn, params, key)`, or 0 without a term.
  """
  if isinstance(config, RegularizerConfig):
    config = config.term()
  if config is None:
    return jnp.zeros((), jnp.float32)
  return jnp.asarray(config(loss_fn, params, key))


def weight(config: Any, episode_step: jax.Array, num_inner_steps: int) -> jax.Array:
  """1.0 where the term is on at this point of the episode, else 0.0.

  Args:
    config: a flatness term or `RegularizerConfig` (its `when`: 'always' when it
      has none), or None.
    episode_step: inner steps taken in this episode.
    num_inner_steps: the episode's length.

  Returns:
    A float32 scalar.
  """
  when = getattr(config, "when", "always")
  if config is None or when == "always":
    return jnp.float32(1.0)
  first_half = episode_step < num_inner_steps // 2
  on = first_half if when == "first_half" else jnp.logical_not(first_half)
  return on.astype(jnp.float32)
