"""Inner training of a meta-batch of optimizees as pure functions, unrolled with `lax.scan`.

An inner step draws a minibatch per optimizee, takes the gradients (vmapped over
the meta-batch) and applies the learned optimizer; an unroll scans it
`unroll_length` times, so compile time does not grow with the unroll. The
meta-loss of an unroll is the mean inner training loss (or mean log-ratio to the
episode's first loss) at the iterates x_t, which depend on the meta-parameters
through the updates. By default the gradients fed to the optimizer are
stop-gradient'ed (first-order meta-gradient, as in Andrychowicz et al. 2016).

Two choices here are for speed (measured in `benchmarks/meta_step.py`):
- A coordinatewise learned optimizer (`lopt.coordinatewise`) updates the whole
  meta-batch in one call: B optimizees are just B times more coordinates, so
  its matmuls grow instead of being vmapped (vmap added ~25% on the CPU).
- The scan body is rematerialised (`jax.checkpoint`): the backward pass
  recomputes each step instead of storing every gate activation. On the CPU
  this was 40% faster, not slower (the stored activations cost more in memory
  traffic than the recomputation), and it bounds memory at long unrolls. Only
  the Langevin mean of the entropy term is saved, so its chains run once.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from flatl2o import flatness
from flatl2o.meta import objective
from flatl2o.meta.config import MetaTrainConfig, UnrollConfig


class InnerState(NamedTuple):
  """A meta-batch of optimizees in training, carried from one truncation to the next.

  Attributes:
    params: the optimizees' parameters, each leaf with a leading meta-batch axis.
    opt_state: the learned optimizer's state for all of them.
    initial_loss: `[B]` training loss at the episode's start (log-ratio loss).
    step: inner steps taken in this episode.
    scale: Lv et al.'s random scaling, the factors c of `f(c * x)` (like
      `params`), or None when `random_scaling` is off.
    anchor: the centre v of the random convex term (like `params`), or None
      when `convex_term` is off.
  """

  params: Any
  opt_state: Any
  initial_loss: jax.Array
  step: jax.Array
  scale: Any = None
  anchor: Any = None


def _episode_objective(task, convex_term: float):
  """The loss an episode trains: `f(c * x) + convex_term / 2 * mean((x - v)^2)`.

  `scale` (c) and `anchor` (v) are None when their trick is off; then this is
  `task.loss` itself.
  """
  def loss(params, batch, scale, anchor):
    model = params if scale is None else jax.tree.map(jnp.multiply, params, scale)
    value = task.loss(model, batch)
    if anchor is not None:
      squares = jax.tree.leaves(jax.tree.map(lambda x, v: jnp.sum((x - v) ** 2), params, anchor))
      size = sum(x.size for x in jax.tree.leaves(params))
      value = value + (0.5 * convex_term / max(size, 1)) * sum(squares).astype(value.dtype)
    return value

  return loss


def batched_transform(lopt, meta_params) -> optax.GradientTransformation:
  """The learned transformation acting on pytrees with a leading meta-batch axis.

  Args:
    lopt: the learned-optimizer architecture.
    meta_params: its parameters.

  Returns:
    An optax transformation (`update` takes `loss=` per optimizee): the learned one
    itself when `lopt.coordinatewise`, else it vmapped over the meta-batch axis.
  """
  tx = lopt.transform(meta_params)
  if lopt.coordinatewise:
    return tx  # every coordinate is independent: the batch axis is more coordinates

  def update(grads, state, params, *, loss):
    return jax.vmap(lambda g, s, p, l: tx.update(g, s, p, loss=l))(grads, state, params, loss)

  return optax.GradientTransformationExtraArgs(jax.vmap(tx.init), update)


def init_inner(lopt, task, meta_params, keys: jax.Array,
               config: MetaTrainConfig | UnrollConfig | None = None) -> InnerState:
  """Fresh optimizees, one per key, and the optimizer state for them.

  With `config.random_scaling` or `config.convex_term` on, each optimizee also
  draws its episode's scaling factors or convex-term centre.

  Args:
    lopt: the learned-optimizer architecture.
    task: the optimizee.
    meta_params: the learned optimizer's parameters.
    keys: `[B]` keys, one per optimizee.
    config: a `MetaTrainConfig` or `UnrollConfig` (its `random_scaling` and
      `convex_term`); None turns both off.

  Returns:
    The `InnerState` of the fresh meta-batch, at step 0.
  """
  scaling = config.random_scaling if config is not None else 0.0
  convex = config.convex_term if config is not None else 0.0
  objective_fn = _episode_objective(task, convex)

  def one(key):
    init_key, batch_key = jax.random.split(key)
    scale_key, anchor_key = jax.random.fold_in(key, 2), jax.random.fold_in(key, 3)
    params = task.init(init_key)
    scale = anchor = None
    if scaling > 0:
      leaves, treedef = jax.tree.flatten(params)
      factors = [jnp.exp(jax.random.uniform(k, jnp.shape(x), jnp.float32, -scaling, scaling))
                 .astype(x.dtype) for k, x in
                 zip(jax.random.split(scale_key, max(len(leaves), 1)), leaves)]
      scale = jax.tree.unflatten(treedef, factors)
      params = jax.tree.map(jnp.divide, params, scale)  # the same function at the start
    if convex > 0:
      anchor = flatness.normal_like(anchor_key, params)
    loss = objective_fn(params, task.sample_batch(batch_key), scale, anchor)
    return params, loss, scale, anchor

  params, initial_loss, scale, anchor = jax.vmap(one)(keys)
  opt_state = batched_transform(lopt, meta_params).init(params)
  return InnerState(params, opt_state, initial_loss, jnp.zeros((), jnp.int32), scale, anchor)


def _step_fn(task, tx, differentiate_gradients: bool,
             regularizer: Any = None,
             reg_weight: jax.Array | float = 0.0, scale=None, anchor=None,
             convex_term: float = 0.0, meta_batch_slice=None):
  """`((params, opt_state), key) -> ((params, opt_state), (losses[B], reg[B]))` on a meta-batch.

  `reg` is the weighted flatness term at each optimizee's iterate (zeros when
  no regularizer is on); with `add_to_inner_loss` it is also in the gradient.
  `scale` / `anchor` (leading meta-batch axis, or None) switch on Lv et al.'s
  training tricks (`_episode_objective`). `meta_batch_slice = (offset, total)`
  says these B optimizees are rows `offset:offset+B` of a meta-batch of `total`
  (one device's share, `flatl2o.meta.sharding`): they then draw the minibatches
  those rows would draw in the whole meta-batch.
  """
  regularizing = regularizer is not None
  objective_fn = _episode_objective(task, convex_term)

  def one(params, scale, anchor, key):
    batch = task.sample_batch(key)
    loss_fn = lambda p: objective_fn(p, batch, scale, anchor)
    if not regularizing:
      loss, grads = jax.value_and_grad(loss_fn)(params)
      return loss, jnp.zeros((), jnp.float32), grads

    def regularized(p):
      loss = loss_fn(p)
      reg = jax.lax.cond(
          reg_weight > 0,
          lambda q: (reg_weight * objective.term(
              regularizer, loss_fn, q, jax.random.fold_in(key, 1))).astype(loss.dtype),
          lambda q: jnp.zeros((), loss.dtype), p)
      total = loss + reg if getattr(regularizer, "add_to_inner_loss", False) else loss
      return total, (loss, reg)

    (_, (loss, reg)), grads = jax.value_and_grad(regularized, has_aux=True)(params)
    return loss, reg, grads

  def step(carry, key):
    params, opt_state = carry
    batch_size = jax.tree.leaves(params)[0].shape[0]
    if meta_batch_slice is None:
      keys = jax.random.split(key, batch_size)
    else:
      offset, total = meta_batch_slice
      keys = jax.lax.dynamic_slice_in_dim(jax.random.split(key, total), offset, batch_size)
    losses, regs, grads = jax.vmap(one)(params, scale, anchor, keys)
    if not differentiate_gradients:
      grads = jax.lax.stop_gradient(grads)
    updates, opt_state = tx.update(grads, opt_state, params, loss=losses)
    return (optax.apply_updates(params, updates), opt_state), (losses, regs)

  return step


def unroll(lopt, task, config: MetaTrainConfig | UnrollConfig, meta_params, state: InnerState,
           key: jax.Array, meta_batch_offset: jax.Array | None = None,
           ) -> tuple[jax.Array, tuple[InnerState, dict[str, jax.Array]]]:
  """Runs one truncation; returns `(meta_loss, (new_state, {'losses', 'regularizer'}))`.

  `losses` and `regularizer` are `[T, B]`: the inner training losses and the
  weighted flatness term at each iterate. With `meta_batch_offset`, `state` holds
  rows `offset:offset+B` of a meta-batch of `config.meta_batch_size` (a device's
  share) and they train as they would in the whole meta-batch.

  Args:
    lopt: the learned-optimizer architecture.
    task: the optimizee.
    config: a `MetaTrainConfig` or `UnrollConfig`.
    meta_params: the learned optimizer's parameters.
    state: the optimizees in training.
    key: the truncation's key (split into one key per inner step).
    meta_batch_offset: the first row of this device's share of the meta-batch;
      None when `state` is the whole meta-batch.

  Returns:
    `(meta_loss, (new_state, {'losses', 'regularizer'}))`: the scalar meta-loss
    (`config.meta_loss` plus the mean flatness term), the state advanced by
    `unroll_length` steps and the `[T, B]` traces.
  """
  config = config.unroll_config()  # what a compiled step reads: the term, not the flat record
  tx = batched_transform(lopt, meta_params)
  reg_weight = objective.weight(config.regularizer, state.step, config.num_inner_steps)
  step = jax.checkpoint(
      _step_fn(task, tx, config.second_order, config.regularizer, reg_weight, state.scale,
               state.anchor, config.convex_term,
               None if meta_batch_offset is None else (meta_batch_offset,
                                                       config.meta_batch_size)),
      policy=jax.checkpoint_policies.save_only_these_names(objective.ENTROPY_MEAN))
  keys = jax.random.split(key, config.unroll_length)
  block = config.remat_block_length
  if block == 1:
    (params, opt_state), (losses, regs) = jax.lax.scan(
        step, (state.params, state.opt_state), keys)
  else:
    # Only each block's incoming carry is a residual of the outer scan; the
    # backward replays one block at a time (its k carries live only then).
    run_block = jax.checkpoint(lambda carry, block_keys: jax.lax.scan(step, carry, block_keys))
    (params, opt_state), (losses, regs) = jax.lax.scan(
        run_block, (state.params, state.opt_state),
        keys.reshape(config.unroll_length // block, block, *keys.shape[1:]))
    losses, regs = (x.reshape(config.unroll_length, *x.shape[2:]) for x in (losses, regs))
  if config.meta_loss == "log_ratio":
    meta_loss = jnp.mean(jnp.log(losses / jax.lax.stop_gradient(state.initial_loss)))
  else:
    meta_loss = jnp.mean(losses)
  meta_loss = meta_loss + jnp.mean(regs)
  new_state = state._replace(params=params, opt_state=opt_state,
                             step=state.step + config.unroll_length)
  return meta_loss, (new_state, {"losses": losses, "regularizer": regs})


def rollout(lopt, task, meta_params, keys: jax.Array, num_steps: int):
  """Trains fresh optimizees (one per key) for `num_steps`; returns params and losses[T, B].

  Args:
    lopt: the learned-optimizer architecture.
    task: the optimizee.
    meta_params: the learned optimizer's parameters.
    keys: `[B]` keys, one per optimizee; the minibatch keys derive from the first.
    num_steps: inner steps T.

  Returns:
    `(params, losses)`: the trained optimizees' parameters (leading axis B) and the
    `[T, B]` training losses (no regularizer, no training tricks).
  """
  state = init_inner(lopt, task, meta_params, keys)
  tx = batched_transform(lopt, meta_params)
  step = _step_fn(task, tx, differentiate_gradients=False)
  step_keys = jax.random.split(jax.random.fold_in(keys[0], 1), num_steps)
  (params, _), (losses, _) = jax.lax.scan(step, (state.params, state.opt_state), step_keys)
  return params, losses
