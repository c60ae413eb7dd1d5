"""Inner training as pure functions: one step, and a `lax.scan` unroll with its meta-loss.

An inner step is `(params, opt_state, key) -> (params, opt_state, loss)` with
the learned optimizer's transformation; an unroll scans it `unroll_length`
times, so compile time does not grow with the unroll. The meta-loss of an
unroll is the mean inner training loss (or mean log-ratio to the episode's first
loss) at the iterates x_t, which depend on the meta-parameters through the
updates. By default the gradients fed to the optimizer are stop-gradient'ed
(first-order meta-gradient, as in Andrychowicz et al. 2016).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from flatl2o.meta.config import MetaTrainConfig


class InnerState(NamedTuple):
  """One optimizee in training, carried from one truncation to the next.

  Attributes:
    params: the optimizee's parameters.
    opt_state: the learned optimizer's state for them.
    initial_loss: training loss at the episode's start (for the log-ratio loss).
    step: inner steps taken in this episode.
  """

  params: Any
  opt_state: Any
  initial_loss: jax.Array
  step: jax.Array


def init_inner(lopt, task, meta_params, key: jax.Array) -> InnerState:
  init_key, batch_key = jax.random.split(key)
  params = task.init(init_key)
  opt_state = lopt.transform(meta_params).init(params)
  initial_loss = task.loss(params, task.sample_batch(batch_key))
  return InnerState(params, opt_state, initial_loss, jnp.zeros((), jnp.int32))


def inner_step(tx: optax.GradientTransformation, task, params, opt_state, key,
               differentiate_gradients: bool = False):
  batch = task.sample_batch(key)
  loss, grads = jax.value_and_grad(task.loss)(params, batch)
  if not differentiate_gradients:
    grads = jax.lax.stop_gradient(grads)
  updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
  return optax.apply_updates(params, updates), opt_state, loss


def unroll(lopt, task, config: MetaTrainConfig, meta_params, state: InnerState,
           key: jax.Array) -> tuple[jax.Array, tuple[InnerState, jax.Array]]:
  """Runs one truncation; returns `(meta_loss, (new_state, inner_losses))`."""
  tx = lopt.transform(meta_params)

  def body(carry, k):
    params, opt_state = carry
    params, opt_state, loss = inner_step(tx, task, params, opt_state, k, config.second_order)
    return (params, opt_state), loss

  keys = jax.random.split(key, config.unroll_length)
  (params, opt_state), losses = jax.lax.scan(body, (state.params, state.opt_state), keys)
  if config.meta_loss == "log_ratio":
    meta_loss = jnp.mean(jnp.log(losses / jax.lax.stop_gradient(state.initial_loss)))
  else:
    meta_loss = jnp.mean(losses)
  new_state = InnerState(params, opt_state, state.initial_loss,
                         state.step + config.unroll_length)
  return meta_loss, (new_state, losses)


def rollout(lopt, task, meta_params, key: jax.Array, num_steps: int):
  """Trains a fresh optimizee for `num_steps` steps; returns final params and losses."""
  tx = lopt.transform(meta_params)
  init_key, data_key = jax.random.split(key)
  params = task.init(init_key)

  def body(carry, k):
    params, opt_state = carry
    params, opt_state, loss = inner_step(tx, task, params, opt_state, k)
    return (params, opt_state), loss

  (params, _), losses = jax.lax.scan(body, (params, tx.init(params)),
                                     jax.random.split(data_key, num_steps))
  return params, losses
