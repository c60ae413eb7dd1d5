"""Meta-gradient estimators: truncated backpropagation, PES and antithetic ES.

An estimator turns the meta-parameters and the state of the optimizees in
training into a meta-loss and an estimate of its gradient, one truncation of
`unroll_length` inner steps at a time:

  state = estimator.init(meta_params, key)          # a fresh episode
  meta_loss, meta_grad, state, metrics = estimator.estimate(meta_params, state, key)

`meta_train` chooses one with `MetaTrainConfig.estimator`; the meta-optimizer
update, the non-finite guard, episode resets and sharding are the trainer's.

- **truncated**: `jax.grad` through the `lax.scan` of one truncation
  (`inner.unroll`: remat blocks, second order, every regularizer). Cheap and low
  variance, biased toward short horizons: a step's effect on later truncations
  is never seen.
- **es** (antithetic evolution strategies over one truncation): draw
  `eps_i ~ N(0, sigma^2 I)` for `i = 1..N` (`es_pairs`), unroll the truncation
  from the same state and keys with `theta + eps_i` and `theta - eps_i`, and
  estimate `g = 1/(2 N sigma^2) sum_i eps_i (L(theta + eps_i) - L(theta - eps_i))`,
  an unbiased estimate of the gradient of the Gaussian-smoothed truncation loss
  `E[L(theta + eps)]`. The carried state is advanced with `theta` itself (one
  more unroll in the same vmap), and the reported meta-loss is `L(theta)`.
- **pes** (Persistent Evolution Strategies; Vicol, Metz and Sohl-Dickstein,
  "Unbiased Gradient Estimation in Unrolled Computation Graphs with Persistent
  Evolution Strategies", ICML 2021): each pair keeps two inner states across
  truncations, the + run (always `theta + eps`) and the - run, and the running
  sum `xi_i` of the perturbations it has used in this episode (zero at `init`).
  Per truncation: draw `eps_i`, advance the + state with `theta + eps_i` and the
  - state with `theta - eps_i`, `xi_i += eps_i`, and estimate
  `g = 1/(2 N sigma^2) sum_i xi_i (L+_i - L-_i)`. Its mean over the truncations of
  an episode is unbiased for the gradient of the whole episode's smoothed
  meta-loss, however short the truncations. `xi` is part of the state, so of
  every checkpoint.

ES and PES need no backward pass (neither `second_order` nor
`remat_block_length` changes them) and take the regularized meta-loss as it is.
All pairs share the unroll's minibatch keys and, with the meta-batch, its
optimizee initialisations (common random numbers: only the perturbation differs
between the two runs of a pair).

An estimator is a `flax.struct` dataclass: the task is a pytree field and the
architecture and `UnrollConfig` are static, so it is an argument of jitted
functions and equal configurations share one compilation. On a device mesh each
device estimates on its share of the meta-batch (`meta_batch_offset`) and the
losses are averaged across devices (`flatl2o.meta.sharding`).

Estimators are registered by name (`names()`: 'truncated', 'pes', 'es'); a
user's own is a `flax.struct` dataclass subclassing `Base` (or meeting the
`Estimator` protocol) under `@register("name")`, then `MetaTrainConfig(estimator=
"name")` or `--import=MODULE --estimator=name`.

Example:

>>> import jax
>>> from flatl2o import meta, optimizers, tasks
>>> from flatl2o.meta import estimators
>>> estimators.names()[:3]
('truncated', 'pes', 'es')
>>> lopt, task = optimizers.learned("l2o_dm"), tasks.get("quadratic", batch_size=4)
>>> config = meta.MetaTrainConfig(unroll_length=2, num_inner_steps=4, meta_batch_size=2,
...                               estimator="pes", es_pairs=2)
>>> est = estimators.get("pes", lopt, task, config)
>>> meta_params = lopt.init(jax.random.key(0))
>>> state = est.init(meta_params, jax.random.key(1))
>>> loss, grad, state, metrics = est.estimate(meta_params, state, jax.random.key(2))
>>> int(state.step), sorted(metrics)
(2, ['inner_loss_last', 'regularizer'])
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from flax import struct

from flatl2o.meta import inner, sharding
from flatl2o.meta.config import ESTIMATORS, MetaTrainConfig, UnrollConfig


class Estimator(Protocol):
  """What `meta_train` needs of a meta-gradient estimator (`Base` provides all but
  `estimate`).

  The trainer builds one per compiled step as `cls(task=..., lopt=..., config=...,
  meta_batch_offset=...)` (a `flax.struct` dataclass: `task` a pytree field, the
  rest static), so it must be a pure description with no state of its own. The
  episode state it returns must have:

  - `params`: the optimizees' parameters (the trainer's non-finite check reads it);
  - `step`: inner steps taken in the episode (a shared scalar; the trainer starts a
    fresh episode with `init` when it reaches `config.num_inner_steps`).
  """

  config: UnrollConfig

  def init(self, meta_params: Any, key: jax.Array) -> Any:
    """The state of a fresh episode of the meta-batch (optimizees and any noise sums).

    Args:
      meta_params: the learned optimizer's parameters.
      key: the episode's key; the optimizees' initialisations are drawn from it.

    Returns:
      The episode state, with `params` and a `step` of 0.
    """
    ...

  def estimate(self, meta_params: Any, state: Any, key: jax.Array
               ) -> tuple[jax.Array, Any, Any, dict[str, jax.Array]]:
    """One truncation: `(meta_loss, meta_grad, new_state, metrics)`.

    `metrics` holds `inner_loss_last` and `regularizer` (means over the meta-batch).

    Args:
      meta_params: the learned optimizer's parameters.
      state: the episode state (from `init` or the previous `estimate`).
      key: the truncation's key.

    Returns:
      `(meta_loss, meta_grad, new_state, metrics)`: the scalar meta-loss, its
      gradient estimate (a pytree like `meta_params`), the advanced episode state
      and the metrics dict.
    """
    ...

  def state_specs(self, state: Any) -> Any:
    """Partition specs of `state` on the device mesh (`flatl2o.meta.sharding`).

    Args:
      state: an episode state (or its shapes).

    Returns:
      A pytree like `state` of `jax.sharding.PartitionSpec`s.
    """
    ...

  def per_device(self, fn: Callable[[Any], Any], state: Any) -> Any:
    """`fn` applied to the leaves of `state` that each device holds its own share of.

    Args:
      fn: a function of a pytree (`sharding.stack` or `sharding.unstack`).
      state: an episode state.

    Returns:
      The state with `fn` applied to those leaves, the shared ones unchanged.
    """
    ...


class PESState(NamedTuple):
  """The state of PES (and, without `noise_sum`, the runs of ES).

  Attributes:
    particles: the inner states of the `2N` runs, + runs first then - runs; every
      leaf but `step` has a leading axis of `2N`.
    noise_sum: `xi`, per pair the sum of the perturbations used in this episode
      (a pytree like the meta-parameters with a leading axis of `N`).
  """

  particles: inner.InnerState
  noise_sum: Any

  @property
  def params(self) -> Any:
    """The optimizees' parameters of every run (what the non-finite check looks at)."""
    return self.particles.params

  @property
  def step(self) -> jax.Array:
    """Inner steps taken in this episode (shared by every run)."""
    return self.particles.step


def _axes(state: inner.InnerState, axis: int | None = 0) -> inner.InnerState:
  """vmap axes of a stack of inner states: every leaf but the shared episode `step`."""
  return inner.InnerState(axis, axis, axis, None, axis, axis)


def _broadcast(state: inner.InnerState, copies: int) -> inner.InnerState:
  tile = lambda x: jnp.broadcast_to(x, (copies,) + jnp.shape(x))
  return state._replace(**{k: jax.tree.map(tile, v) for k, v in state._asdict().items()
                           if k != "step"})


def _perturbations(meta_params, key: jax.Array, pairs: int, std: float):
  """`eps` of `pairs` draws, a pytree like `meta_params` with a leading axis of `pairs`."""
  leaves, treedef = jax.tree.flatten(meta_params)
  keys = jax.random.split(key, max(len(leaves), 1))
  eps = [std * jax.random.normal(k, (pairs,) + jnp.shape(x), jnp.float32).astype(x.dtype)
         for k, x in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, eps)


def _weighted_sum(weights: jax.Array, stacked):
  """`sum_i weights_i * stacked_i` over the leading axis of every leaf."""
  return jax.tree.map(lambda x: jnp.tensordot(weights.astype(x.dtype), x, axes=1), stacked)


@struct.dataclass
class Base:
  """Fields every estimator has, and what an `inner.InnerState` episode needs.

  Attributes:
    task: the optimizee (a pytree: its data are arguments, not constants).
    lopt: the learned-optimizer architecture (static).
    config: what the compiled steps read (static).
    meta_batch_offset: with a device mesh, the first row of this device's share of
      the meta-batch (a traced scalar); None on one device.
  """

  task: Any
  lopt: Any = struct.field(pytree_node=False)
  config: UnrollConfig = struct.field(pytree_node=False)
  meta_batch_offset: Any = None

  @property
  def sharded(self) -> bool:
    return self.meta_batch_offset is not None

  def average(self, x):
    """`x` averaged across devices (each holds the mean over its share of the meta-batch);
    `x` itself on one device.

    Args:
      x: an array or pytree of arrays (a mean over this device's share).

    Returns:
      `x` after `jax.lax.pmean` over the mesh axis when sharded, else `x` unchanged.
    """
    return jax.lax.pmean(x, sharding.AXIS) if self.sharded else x

  def fresh(self, meta_params, key: jax.Array) -> inner.InnerState:
    """Fresh optimizees of this estimator's share of the meta-batch (`inner.init_inner`).

    Args:
      meta_params: the learned optimizer's parameters.
      key: split into one key per optimizee of the whole meta-batch; when sharded,
        this device takes the rows from `meta_batch_offset`.

    Returns:
      The `inner.InnerState` of a fresh episode.
    """
    keys = jax.random.split(key, self.config.meta_batch_size)
    if self.sharded:
      local = self.config.meta_batch_size // sharding.resolve_num_devices(
          self.config.num_devices, self.config.meta_batch_size)
      keys = jax.lax.dynamic_slice_in_dim(keys, self.meta_batch_offset, local)
    return inner.init_inner(self.lopt, self.task, meta_params, keys, self.config)

  def unroll(self, meta_params, state: inner.InnerState, key: jax.Array):
    """`inner.unroll` of one truncation on this estimator's share of the meta-batch.

    Args:
      meta_params: the learned optimizer's parameters.
      state: the optimizees in training.
      key: the truncation's key.

    Returns:
      `(meta_loss, (new_state, {'losses', 'regularizer'}))`.
    """
    return inner.unroll(self.lopt, self.task, self.config, meta_params, state, key,
                        self.meta_batch_offset)

  def state_specs(self, state: inner.InnerState) -> inner.InnerState:
    """Partition specs of an episode state on the mesh (`flatl2o.meta.sharding`).

    Args:
      state: an episode state (or its shapes).

    Returns:
      Every optimizee leaf split by device along its leading (stacked) axis, but the
      episode step, which all devices share.
    """
    P = jax.sharding.PartitionSpec  # pylint: disable=invalid-name
    split = lambda tree: jax.tree.map(lambda _: P(sharding.AXIS), tree)
    return inner.InnerState(split(state.params), split(state.opt_state), P(sharding.AXIS), P(),
                            split(state.scale), split(state.anchor))

  def per_device(self, fn, state: inner.InnerState) -> inner.InnerState:
    """`fn` applied to the per-device leaves of an episode state (all but `step`).

    Args:
      fn: a function of a pytree (`sharding.stack` or `sharding.unstack`).
      state: an episode state.

    Returns:
      The state with `fn` applied to those leaves.
    """
    return state._replace(**{k: fn(v) for k, v in state._asdict().items() if k != "step"})

  def metrics(self, traces) -> dict[str, jax.Array]:
    """The metrics of one truncation, averaged across devices.

    Args:
      traces: the `{'losses', 'regularizer'}` dict of an unroll (`[T, B]` arrays).

    Returns:
      `{'inner_loss_last': mean loss at the last inner step, 'regularizer': mean
      weighted flatness term over the truncation}`, scalars.
    """
    return {"inner_loss_last": self.average(traces["losses"][..., -1, :].mean()),
            "regularizer": self.average(traces["regularizer"].mean())}


@struct.dataclass
class Truncated(Base):
  """Backpropagation through one truncation (the default estimator)."""

  def init(self, meta_params, key: jax.Array) -> inner.InnerState:
    """The state of a fresh episode (`Base.fresh`).

    Args:
      meta_params: the learned optimizer's parameters.
      key: the episode's key.

    Returns:
      The `inner.InnerState` of fresh optimizees.
    """
    return self.fresh(meta_params, key)

  def estimate(self, meta_params, state: inner.InnerState, key: jax.Array):
    """One truncation, its meta-gradient by backpropagation through the unroll.

    Args:
      meta_params: the learned optimizer's parameters.
      state: the optimizees in training.
      key: the truncation's key.

    Returns:
      `(meta_loss, meta_grad, new_state, metrics)`: the meta-loss averaged across
      devices, its exact gradient, the advanced state and `Base.metrics`.
    """
    def loss_fn(p):
      loss, aux = self.unroll(p, state, key)
      return self.average(loss), aux  # the meta-batch's mean, so grad is its meta-gradient

    (loss, (new_state, traces)), grads = jax.value_and_grad(loss_fn, has_aux=True)(meta_params)
    return loss, grads, new_state, self.metrics(traces)


def _unroll_many(estimator: Base, stacked_params, states: inner.InnerState, key: jax.Array):
  """`inner.unroll` of each run (leading axis) with its own meta-parameters and state."""
  def one(p, s):
    loss, (new_state, traces) = estimator.unroll(p, s, key)
    return loss, new_state, traces

  axes = _axes(states)
  return jax.vmap(one, in_axes=(0, axes), out_axes=(0, axes, 0))(stacked_params, states)


@struct.dataclass
class ES(Base):
  """Antithetic evolution strategies over one truncation, from the carried state."""

  def init(self, meta_params, key: jax.Array) -> inner.InnerState:
    """The state of a fresh episode (`Base.fresh`).

    Args:
      meta_params: the learned optimizer's parameters.
      key: the episode's key.

    Returns:
      The `inner.InnerState` of fresh optimizees.
    """
    return self.fresh(meta_params, key)

  def estimate(self, meta_params, state: inner.InnerState, key: jax.Array):
    """One truncation, its meta-gradient by antithetic ES (`es_pairs`, `es_std`).

    Args:
      meta_params: the learned optimizer's parameters.
      state: the optimizees in training; every run starts from it.
      key: the truncation's key (the perturbations are drawn from a key folded from it).

    Returns:
      `(meta_loss, meta_grad, new_state, metrics)`: `L(theta)`, the ES estimate, the
      state advanced with `theta` itself and the metrics of that run.
    """
    pairs, std = self.config.es_pairs, self.config.es_std
    eps = _perturbations(meta_params, jax.random.fold_in(key, 0xE5), pairs, std)
    stacked = jax.tree.map(lambda p, e: jnp.concatenate([p[None], p + e, p - e]),
                           meta_params, eps)
    losses, new_states, traces = _unroll_many(self, stacked, _broadcast(state, 2 * pairs + 1),
                                              key)
    losses = self.average(losses)
    weights = (losses[1:pairs + 1] - losses[pairs + 1:]) / (2 * pairs * std ** 2)
    grads = _weighted_sum(weights, eps)
    new_state = self.per_device(lambda tree: jax.tree.map(lambda x: x[0], tree), new_states)
    return losses[0], grads, new_state, self.metrics(jax.tree.map(lambda x: x[0], traces))


@struct.dataclass
class PES(Base):
  """Persistent evolution strategies: + and - runs kept across truncations, `xi` summed."""

  def init(self, meta_params, key: jax.Array) -> PESState:
    """A fresh episode: `2 * es_pairs` copies of fresh optimizees, zero noise sums.

    Args:
      meta_params: the learned optimizer's parameters.
      key: the episode's key (every run starts from the same optimizees).

    Returns:
      The `PESState`.
    """
    pairs = self.config.es_pairs
    noise_sum = jax.tree.map(lambda x: jnp.zeros((pairs,) + jnp.shape(x), x.dtype), meta_params)
    return PESState(_broadcast(self.fresh(meta_params, key), 2 * pairs), noise_sum)

  def estimate(self, meta_params, state: PESState, key: jax.Array):
    """One truncation of every + and - run, its meta-gradient by PES.

    Args:
      meta_params: the learned optimizer's parameters.
      state: the runs and noise sums (from `init` or the previous `estimate`).
      key: the truncation's key (the perturbations are drawn from a key folded from it).

    Returns:
      `(meta_loss, meta_grad, new_state, metrics)`: the mean loss of all runs, the
      PES estimate, the `PESState` with advanced runs and updated noise sums, and the
      metrics averaged over the runs.
    """
    pairs, std = self.config.es_pairs, self.config.es_std
    eps = _perturbations(meta_params, jax.random.fold_in(key, 0xE5), pairs, std)
    noise_sum = jax.tree.map(jnp.add, state.noise_sum, eps)
    stacked = jax.tree.map(lambda p, e: jnp.concatenate([p + e, p - e]), meta_params, eps)
    losses, particles, traces = _unroll_many(self, stacked, state.particles, key)
    losses = self.average(losses)
    weights = (losses[:pairs] - losses[pairs:]) / (2 * pairs * std ** 2)
    grads = _weighted_sum(weights, noise_sum)
    metrics = self.metrics(jax.tree.map(lambda x: x.mean(0), traces))
    return losses.mean(), grads, PESState(particles, noise_sum), metrics

  def state_specs(self, state: PESState) -> PESState:
    """The runs' specs as `Base.state_specs`; the noise sums are the same on every device.

    Args:
      state: a `PESState` (or its shapes).

    Returns:
      A `PESState` of partition specs (the noise sums replicated).
    """
    P = jax.sharding.PartitionSpec  # pylint: disable=invalid-name
    return PESState(super().state_specs(state.particles),
                    jax.tree.map(lambda _: P(), state.noise_sum))

  def per_device(self, fn, state: PESState) -> PESState:
    """`fn` on the runs' per-device leaves; the noise sums are shared.

    Args:
      fn: a function of a pytree (`sharding.stack` or `sharding.unstack`).
      state: a `PESState`.

    Returns:
      The `PESState` with `fn` applied to the runs' per-device leaves.
    """
    return PESState(super().per_device(fn, state.particles), state.noise_sum)


_REGISTRY: dict[str, type] = {}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def register(name: str, *, overwrite: bool = False) -> Callable[[type], type]:
  """A class decorator that adds a meta-gradient estimator under `name`.

  Args:
    name: a letter, then letters, digits or '_' (`MetaTrainConfig.estimator`,
      `--estimator=NAME`).
    overwrite: replace an estimator already registered under `name`.

  Returns:
    The decorator; it returns the class unchanged.

  Raises:
    ValueError: a bad name, a name already registered (without `overwrite`), or a
      class without `init` and `estimate`.
  """
  if not isinstance(name, str) or not _NAME.fullmatch(name):
    raise ValueError(f"cannot register estimator name {name!r}: use a letter, then letters, "
                     "digits or '_'")

  def decorate(cls: type) -> type:
    if not all(callable(getattr(cls, m, None)) for m in
               ("init", "estimate", "state_specs", "per_device")):
      raise ValueError(f"cannot register estimator {name!r}: {cls!r} lacks init, estimate, "
                       "state_specs or per_device (subclass flatl2o.meta.estimators.Base)")
    if name in _REGISTRY and not overwrite and _REGISTRY[name] is not cls:
      raise ValueError(f"estimator {name!r} is already registered; pick another name, or pass "
                       "overwrite=True to replace it")
    _REGISTRY[name] = cls
    return cls

  return decorate


def names() -> tuple[str, ...]:
  """The registered estimators: 'truncated', 'pes', 'es', then a user's.

  Returns:
    A tuple of names.
  """
  return tuple(_REGISTRY)


for _name, _cls in zip(ESTIMATORS, (Truncated, PES, ES)):
  register(_name)(_cls)


def get(name: str, lopt, task, config: MetaTrainConfig | UnrollConfig,
        meta_batch_offset: Any = None) -> Estimator:
  """The estimator `name` of `lopt` on `task` under `config`.

  Args:
    name: one of `names()`.
    lopt: the learned-optimizer architecture.
    task: the optimizee.
    config: a `MetaTrainConfig` or `UnrollConfig`.
    meta_batch_offset: on a device mesh, the first row of this device's share of the
      meta-batch (traced); None on one device.

  Returns:
    The estimator.

  Raises:
    ValueError: `name` is not registered.
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown estimator {name!r}; accepted: {', '.join(_REGISTRY)}")
  return _REGISTRY[name](task=task, lopt=lopt, config=config.unroll_config(),
                         meta_batch_offset=meta_batch_offset)
