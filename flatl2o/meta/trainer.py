"""Meta-training: fit a learned optimizer's meta-parameters by truncated unrolls.

Each meta-step takes one truncation of `unroll_length` inner steps on a vmapped
meta-batch of optimizees, differentiates the mean meta-loss w.r.t. the
meta-parameters (`jax.grad` through `lax.scan`) and applies an optax
meta-optimizer (global-norm clip, then Adam). Episodes of `num_inner_steps`
start from fresh optimizee initialisations. Every key is derived from the
seed and the meta-step index, so a resumed run repeats an uninterrupted one.
The meta-batch may be split over several devices or hosts
(`MetaTrainConfig.num_devices`, `flatl2o.meta.sharding`) with the same result.
The run directory (identity, checkpoints, metrics) is `flatl2o.meta.run_dir`.

A meta-step whose meta-loss or meta-gradient is not finite leaves the
meta-parameters and meta-optimizer state unchanged (it is counted as skipped);
a meta-batch holding a blown-up optimizee is restarted at the next meta-step;
`max_consecutive_skipped` skipped steps in a row stop the run with
`MetaTrainingDivergedError`, leaving the last checkpoint intact.

Every `validation_every` meta-steps the learned optimizer trains fresh
optimizees for `validation_horizon` steps and is scored on the validation split
(accuracy, or minus the loss for tasks without accuracy). The best-scoring
meta-parameters are what `meta_train` returns as `meta_params`: model selection by
validation at the meta-test horizon, never by meta-loss.

Example:
  >>> lopt = flatl2o.optimizers.L2ODM()
  >>> task = flatl2o.tasks.get("mlp_sigmoid", dataset="digits")
  >>> result = flatl2o.meta.meta_train(lopt, task, flatl2o.meta.MetaTrainConfig())
  >>> tx = lopt.transform(result.meta_params)
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from flatl2o.meta import estimators, imitation, inner, schedules, selection, sharding, terms
from flatl2o.meta import run_dir as run_dir_lib
from flatl2o.meta.config import MetaTrainConfig, UnrollConfig


def _with_user_term(metadata: dict[str, Any] | None, regularizer) -> dict[str, Any] | None:
  """`metadata` naming a flatness term of the user's own (`flatness_term`: its name, the
  module that registers it, its fields), so an export says what trained it. A built-in
  term adds nothing: those exports stay byte for byte what they were."""
  if not regularizer.active or regularizer.kind in terms.BUILTIN:
    return metadata
  term_class = terms.get(regularizer.kind)
  return {**(metadata or {}), "flatness_term": {
      "name": regularizer.kind, "module": term_class.__module__,
      "fields": {k: v for k, v in regularizer.term_fields}}}


@dataclasses.dataclass
class MetaTrainResult:
  """What meta-training produced.

  Attributes:
    meta_params: the meta-parameters with the best validation score.
    last_meta_params: the meta-parameters after the last meta-step.
    best_score: validation score of `meta_params` (higher is better).
    best_iteration: meta-step at which `meta_params` was validated.
    history: one dict of metrics per logged or validated meta-step.
    num_skipped: meta-steps skipped because of a non-finite loss or gradient.
    resumed_from: meta-step a run directory was resumed from, or None.
    collapsed: True when every validation found the optimizer no longer
      lowering the training loss (`COLLAPSE_RATIO`); `meta_params` is then the
      best-scoring of those validated meta-parameters (still exported, marked
      with `status`), and `best_score` / `best_iteration` are -inf / -1.
    status: "trained"; or, when `collapsed`, "collapsed" with a flatness term
      (it taught the optimizer to stand still) and "undertrained" without one
      (it has not learned yet). The export's optimizer.json records it.
    selected_iteration: meta-step at which `meta_params` was validated,
      collapsed or not (-1: no validation).
    meta_steps_done: meta-steps the run had done when it ended (fewer than
      `num_meta_iterations` when `patience` stopped it).
  """

  meta_params: Any
  last_meta_params: Any
  best_score: float
  best_iteration: int
  history: list[dict[str, Any]]
  num_skipped: int
  resumed_from: int | None = None
  collapsed: bool = False
  status: str = "trained"
  selected_iteration: int = -1
  meta_steps_done: int = -1

  @property
  def theta(self) -> Any:
    """Deprecated name of `meta_params`."""
    warnings.warn("MetaTrainResult.theta is deprecated; use .meta_params", DeprecationWarning,
                  stacklevel=2)
    return self.meta_params

  @property
  def last_theta(self) -> Any:
    """Deprecated name of `last_meta_params`."""
    warnings.warn("MetaTrainResult.last_theta is deprecated; use .last_meta_params",
                  DeprecationWarning, stacklevel=2)
    return self.last_meta_params


def meta_optimizer(config: MetaTrainConfig | UnrollConfig) -> optax.GradientTransformation:
  """The optax optimizer of the meta-parameters: global-norm clip, then Adam.

  Args:
    config: a `MetaTrainConfig` or `UnrollConfig` (its `meta_grad_clip` and
      `meta_learning_rate`).

  Returns:
    The `optax.GradientTransformation`.
  """
  return optax.chain(optax.clip_by_global_norm(config.meta_grad_clip),
                     optax.adam(config.meta_learning_rate))


def num_devices(config: MetaTrainConfig | UnrollConfig) -> int:
  """Devices `config`'s meta-batch is split over here (`sharding.resolve_num_devices`).

  Args:
    config: a `MetaTrainConfig` or `UnrollConfig` (its `num_devices` and
      `meta_batch_size`).

  Returns:
    The number of devices, an int.
  """
  return sharding.resolve_num_devices(config.num_devices, config.meta_batch_size)


_P = PartitionSpec


@functools.partial(jax.jit, static_argnames=("lopt", "config"))
def init_meta_batch(lopt, config: MetaTrainConfig | UnrollConfig, task, meta_params, key):
  """A fresh episode of `config.meta_batch_size` optimizees: the estimator's `init` state.

  For the truncated estimator an `inner.InnerState`; for PES the + and - runs
  and zero noise sums (`estimators.PESState`). Split over `num_devices(config)`
  devices when that is more than one: each per-device leaf then has a leading
  device axis (`flatl2o.meta.sharding`).

  Args:
    lopt: the learned-optimizer architecture (static).
    config: a `MetaTrainConfig` or `UnrollConfig` (static).
    task: the optimizee.
    meta_params: the learned optimizer's parameters.
    key: the episode's key.

  Returns:
    The estimator's episode state.
  """
  config = config.unroll_config()
  devices = num_devices(config)
  if devices == 1:
    return estimators.get(config.estimator, lopt, task, config).init(meta_params, key)
  local_batch = config.meta_batch_size // devices

  def local(task, meta_params, key):
    offset = jax.lax.axis_index(sharding.AXIS) * local_batch
    estimator = estimators.get(config.estimator, lopt, task, config, offset)
    return estimator.per_device(sharding.stack, estimator.init(meta_params, key))

  one = estimators.get(config.estimator, lopt, task, dataclasses.replace(config, meta_batch_size=1))
  shapes = jax.eval_shape(lambda: one.init(meta_params, key))
  return jax.shard_map(local, mesh=sharding.mesh(devices), in_specs=(_P(), _P(), _P()),
                       out_specs=one.state_specs(shapes))(task, meta_params, key)


def _apply_meta_gradient(config, loss, grads, meta_params, meta_opt_state):
  """One meta-optimizer update, skipped (inputs returned) when loss or gradient is not finite."""
  grad_norm = optax.global_norm(grads)
  updates, new_opt_state = meta_optimizer(config).update(grads, meta_opt_state, meta_params)
  new_params = optax.apply_updates(meta_params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  metrics = {"meta_loss": loss, "meta_grad_norm": grad_norm, "finite": finite}
  return keep(new_params, meta_params), keep(new_opt_state, meta_opt_state), metrics


@functools.partial(jax.jit, static_argnames=("lopt", "config"), donate_argnums=(4, 5))
def meta_step(lopt, config: MetaTrainConfig | UnrollConfig, task, meta_params, meta_opt_state,
              states, key):
  """One truncation on the meta-batch, estimated by `config.estimator`, and one
  meta-optimizer update (non-finite guarded).

  Returns `(meta_params, meta_opt_state, states, metrics)`; when the meta-loss or
  meta-gradient is not finite the first two come back unchanged. With more than
  one device (`num_devices(config)`, states from `init_meta_batch`) each device
  unrolls its share under `shard_map` and the meta-loss is averaged across them.

  Args:
    lopt: the learned-optimizer architecture (static).
    config: a `MetaTrainConfig` or `UnrollConfig` (static).
    task: the optimizee.
    meta_params: the learned optimizer's parameters (donated).
    meta_opt_state: the meta-optimizer's state (donated).
    states: the estimator's episode state (`init_meta_batch` or the previous step).
    key: the truncation's key.

  Returns:
    `(meta_params, meta_opt_state, states, metrics)`; `metrics` holds `meta_loss`,
    `meta_grad_norm`, `finite`, the estimator's metrics and `imitation` (0).
  """
  config = config.unroll_config()
  devices = num_devices(config)
  if devices == 1:
    return _meta_step(estimators.get(config.estimator, lopt, task, config), meta_params,
                      meta_opt_state, states, key)
  local_batch = config.meta_batch_size // devices

  def local(task, meta_params, meta_opt_state, states, key):
    offset = jax.lax.axis_index(sharding.AXIS) * local_batch
    estimator = estimators.get(config.estimator, lopt, task, config, offset)
    meta_params, meta_opt_state, states, metrics = _meta_step(
        estimator, meta_params, meta_opt_state, estimator.per_device(sharding.unstack, states),
        key)
    return meta_params, meta_opt_state, estimator.per_device(sharding.stack, states), metrics

  specs = estimators.get(config.estimator, lopt, task, config).state_specs(states)
  return jax.shard_map(local, mesh=sharding.mesh(devices),
                       in_specs=(_P(), _P(), _P(), specs, _P()),
                       out_specs=(_P(), _P(), specs, _P()))(
                           task, meta_params, meta_opt_state, states, key)


def _meta_step(estimator, meta_params, meta_opt_state, states, key):
  """`meta_step` on the optimizees in `states`: all of them, or a device's share."""
  loss, grads, new_states, estimate_metrics = estimator.estimate(meta_params, states, key)
  meta_params, meta_opt_state, metrics = _apply_meta_gradient(
      estimator.config, loss, grads, meta_params, meta_opt_state)
  metrics.update(estimate_metrics, imitation=jnp.float32(0.0))
  return meta_params, meta_opt_state, new_states, metrics


@functools.partial(jax.jit, static_argnames=("lopt", "config"), donate_argnums=(4,))
def imitation_step(lopt, config: MetaTrainConfig | UnrollConfig, task, meta_params,
                   meta_opt_state, key):
  """One meta-optimizer update on the imitation loss (`flatl2o.meta.imitation`).

  Returns `(meta_params, meta_opt_state, metrics)`, non-finite guarded like `meta_step`.

  Args:
    lopt: the learned-optimizer architecture (static).
    config: a `MetaTrainConfig` or `UnrollConfig` (static).
    task: the optimizee.
    meta_params: the learned optimizer's parameters.
    meta_opt_state: the meta-optimizer's state (donated).
    key: draws the optimizees and minibatches of the Adam trajectory.

  Returns:
    `(meta_params, meta_opt_state, metrics)`; `metrics` holds `meta_loss`,
    `meta_grad_norm`, `finite` and `imitation` (1).
  """
  config = config.unroll_config()
  loss, grads = jax.value_and_grad(
      lambda p: imitation.imitation_loss(lopt, task, config, p, key))(meta_params)
  meta_params, meta_opt_state, metrics = _apply_meta_gradient(config, loss, grads, meta_params,
                                                              meta_opt_state)
  metrics["imitation"] = jnp.float32(1.0)
  return meta_params, meta_opt_state, metrics


# The selection rule's names, where they were before `flatl2o.meta.selection`.
COLLAPSE_RATIO = selection.COLLAPSE_RATIO
collapsed = selection.collapsed
score_of = selection.score_of


@jax.jit
def all_finite(tree) -> jax.Array:
  """Whether every entry of every leaf of `tree` is finite.

  Args:
    tree: a pytree of arrays.

  Returns:
    A scalar boolean array.
  """
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


class MetaTrainingDivergedError(RuntimeError):
  """Too many consecutive meta-steps had a non-finite meta-loss or meta-gradient."""


class MetaTrainingInterrupted(Exception):
  """`should_stop` asked meta-training to stop; the meta-steps done are checkpointed.

  Attributes:
    iteration: meta-steps completed (and saved, with a run directory).
    checkpoint_directory: where they are, or None without a run directory.
  """

  def __init__(self, iteration: int, checkpoint_directory: str | None):
    where = f"; checkpoint in {checkpoint_directory}" if checkpoint_directory else ""
    super().__init__(f"interrupted at meta-step {iteration}{where}")
    self.iteration = iteration
    self.checkpoint_directory = checkpoint_directory


@functools.partial(jax.jit, static_argnames=("lopt", "horizon"))
def validate(lopt, task, meta_params, keys, horizon: int):
  """Mean validation metrics of fresh optimizees trained `horizon` steps with `meta_params`.

  Args:
    lopt: the learned-optimizer architecture (static).
    task: the optimizee; scored on its validation split (`task.evaluate`).
    meta_params: the learned optimizer's parameters.
    keys: `[B]` keys, one per optimizee (`inner.rollout`).
    horizon: inner steps of each run (static).

  Returns:
    The task's validation metrics averaged over the optimizees, plus
    `initial_train_loss` and `final_train_loss`: the mean training loss over the
    first and last tenth of the run (at least one step).
  """

  params, losses = inner.rollout(lopt, task, meta_params, keys, horizon)
  metrics = jax.vmap(lambda p: task.evaluate(p, "validation"))(params)
  metrics = jax.tree.map(jnp.mean, metrics)
  window = max(1, horizon // 10)
  metrics["initial_train_loss"] = losses[:window].mean()
  metrics["final_train_loss"] = losses[-window:].mean()
  return metrics


def _any_process(flag: bool) -> bool:
  """True when `flag` is True in any process: they must all stop at the same meta-step."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  return f"{seconds // 60}m{seconds % 60:02d}s"


def progress_printer(total: int, emit: Callable[[str], None]) -> Callable[[dict[str, Any]], None]:
  """A `meta_train` callback: one line per logged meta-step, with speed and ETA, to `emit`.

  Args:
    total: the run's number of meta-steps (for the percentage and ETA).
    emit: called with each line (e.g. `print`).

  Returns:
    The callback; it takes a metrics record (`iteration`, `meta_steps_per_second`,
    `meta_loss`, `num_skipped` and, after a validation, the validation scores).
  """
  def show(record):
    done, rate = record["iteration"], record["meta_steps_per_second"]
    eta = _duration((total - done) / rate) if rate > 0 else "?"
    line = (f"meta-step {done}/{total} ({100 * done // total}%)  "
            f"meta_loss {record['meta_loss']:.4f}  {rate:.2f} steps/s  ETA {eta}")
    if "validation_score" in record:
      line += (f"  validation score {record['validation_score']:.4f} "
               f"(best {record['best_validation_score']:.4f})")
    if record["num_skipped"]:
      line += f"  skipped {record['num_skipped']}"
    emit(line)
  return show


class MetaTrainState(NamedTuple):
  """Everything a resumed run needs: what a checkpoint holds.

  Attributes:
    meta_params: the learned optimizer's weights now.
    meta_opt_state: the meta-optimizer's state.
    states: the estimator's state (`flatl2o.meta.estimators`): the meta-batch's
      optimizees in training, and PES's noise sums.
    best: the `selection.Selector`'s best (meta-parameters, score, meta-step).
    iteration: meta-steps done.
    num_skipped: meta-steps skipped as non-finite in all.
    consecutive_skipped: ... and in a row, up to now.
    num_resets: meta-batches restarted because an optimizee blew up.
    stage: the curriculum's stage (`schedules.Curriculum`).
  """

  meta_params: Any
  meta_opt_state: Any
  states: Any
  best: dict[str, Any]
  iteration: int
  num_skipped: int
  consecutive_skipped: int
  num_resets: int
  stage: dict[str, Any]

  def to_checkpoint(self) -> dict[str, Any]:
    """As one pytree. Counters are NumPy scalars: orbax cannot save a one-device
    array in a multi-host run, and these are the same on every process anyway.

    Returns:
      A dict of this state's fields, the counters and the `stage` entries as NumPy
      int32 / float32 scalars.
    """
    counters = {k: np.asarray(getattr(self, k), np.int32)
                for k in ("iteration", "num_skipped", "consecutive_skipped", "num_resets")}
    return {**self._asdict(), **counters,
            "stage": {"index": np.asarray(self.stage["index"], np.int32),
                      "best_score": np.asarray(self.stage["best_score"], np.float32)}}

  @classmethod
  def from_checkpoint(cls, tree: dict[str, Any], place) -> "MetaTrainState":
    """The state a checkpoint holds, the inverse of `to_checkpoint`.

    Args:
      tree: a restored `to_checkpoint` pytree.
      place: applied to the meta-parameters and meta-optimizer states (those of
        `best` included), e.g. to replicate them over a device mesh.

    Returns:
      The `MetaTrainState`, its counters and `stage` as Python numbers.
    """
    best = {**tree["best"], "meta_params": place(tree["best"]["meta_params"])}
    if "meta_opt_state" in best:
      best["meta_opt_state"] = place(best["meta_opt_state"])
    return cls(place(tree["meta_params"]), place(tree["meta_opt_state"]), tree["states"], best,
               *(int(tree[k]) for k in ("iteration", "num_skipped", "consecutive_skipped",
                                        "num_resets")),
               {"index": int(tree["stage"]["index"]),
                "best_score": float(tree["stage"]["best_score"])})


class _Parts:
  """What one `meta_train` call computes with: compiled steps, keys, the hooks, the run dir."""

  def __init__(self, lopt, task, config: MetaTrainConfig, run_dir: str | None):
    self.lopt, self.task, self.config = lopt, task, config
    self.unroll = config.unroll_config()  # all the compiled steps see: shared compilations
    if config.num_devices > 1:
      mesh = sharding.mesh(config.num_devices)
      self.place, self.local = (lambda tree: sharding.replicate(tree, mesh)), sharding.local_copy
    else:
      self.place = self.local = lambda tree: tree
    self.base_key = jax.random.key(config.seed)
    self.validation_keys = jax.random.split(jax.random.fold_in(self.base_key, 0x7A11D),
                                            config.validation_seeds)
    self.selector = selection.Selector(keep_opt_state=config.curriculum)
    self.curriculum = schedules.Curriculum.of(config)
    self.imitation = schedules.Imitation(config.imitation_ratio)
    self.run = None if run_dir is None else run_dir_lib.RunDirectory(
        run_dir, run_dir_lib.describe(lopt, task, config))
    self.episode_step = 0  # inner steps of the current episode, on the host (== states.step)

  def fresh_episode(self, meta_params, key):
    self.episode_step = 0
    return init_meta_batch(self.lopt, self.unroll, self.task, meta_params, key)

  def start(self) -> tuple[MetaTrainState, int | None]:
    """A new run's state, or the one restored from the run directory (and where from)."""
    meta_params = self.place(self.lopt.init(jax.random.fold_in(self.base_key, 0x7E7A)))
    meta_opt_state = self.place(meta_optimizer(self.config).init(meta_params))
    state = MetaTrainState(meta_params, meta_opt_state, None,
                           self.selector.initial(meta_params, meta_opt_state), 0, 0, 0, 0,
                           self.curriculum.initial())
    resumed_from = None
    if self.run is not None and self.run.latest_step() is not None:
      template = state._replace(states=self.fresh_episode(meta_params, self.base_key))
      state = MetaTrainState.from_checkpoint(self.run.restore(template.to_checkpoint()),
                                             self.place)
      self.episode_step = int(state.states.step)
      resumed_from = state.iteration
    if self.run is not None:
      self.run.open_metrics(keep_through=state.iteration)
    return state, resumed_from

  def step(self, state: MetaTrainState, iteration_key) -> tuple[MetaTrainState, dict]:
    """One meta-step: a new episode when due, then an imitation step or an estimate."""
    init_key, step_key = jax.random.split(iteration_key)
    horizon = self.curriculum.horizon(state.stage)
    stage_config = self.unroll.unroll_config(horizon)
    states, num_resets = state.states, state.num_resets
    if states is None or self.episode_step >= horizon:
      states = self.fresh_episode(state.meta_params, init_key)
    if self.imitation.wants(iteration_key):
      # An imitation meta-step: its own Adam trajectory; the episode waits.
      meta_params, meta_opt_state, metrics = imitation_step(
          self.lopt, stage_config, self.task, state.meta_params, state.meta_opt_state, step_key)
    else:
      if not bool(all_finite(states.params)):
        # An optimizee blew up in the last truncation (that meta-step was skipped):
        # restart the meta-batch here rather than let it poison the episode.
        states = self.fresh_episode(state.meta_params, init_key)
        num_resets += 1
      meta_params, meta_opt_state, states, metrics = meta_step(
          self.lopt, stage_config, self.task, state.meta_params, state.meta_opt_state, states,
          step_key)
      self.episode_step += self.config.unroll_length
    return state._replace(meta_params=meta_params, meta_opt_state=meta_opt_state,
                          states=states, num_resets=num_resets), metrics

  def guard(self, state: MetaTrainState, finite: bool, done: int) -> MetaTrainState:
    """Counts a non-finite meta-step; too many in a row stop the run."""
    if finite:
      return state._replace(consecutive_skipped=0)
    state = state._replace(num_skipped=state.num_skipped + 1,
                           consecutive_skipped=state.consecutive_skipped + 1)
    if state.consecutive_skipped >= self.config.max_consecutive_skipped:
      where = ""
      if self.run is not None:
        self.run.close()
        self.run.release()
        if self.run.latest_step() is not None:
          where = (f"; the last good checkpoint (meta-step {self.run.latest_step()}) is in "
                   f"{self.run.checkpoint_directory}")
      raise MetaTrainingDivergedError(
          f"meta-training diverged: {state.consecutive_skipped} consecutive meta-steps (up to "
          f"meta-step {done}) had a non-finite meta-loss or meta-gradient and were skipped"
          f"{where}; lower the meta learning rate or the flatness coefficients")
    return state

  def validate(self, state: MetaTrainState, record: dict, iteration_key) -> MetaTrainState:
    """Scores the meta-parameters on validation; the selector and the curriculum react."""
    val = {k: float(v) for k, v in validate(self.lopt, self.task, self.local(state.meta_params),
                                            self.validation_keys,
                                            self.config.validation_horizon).items()}
    record.update({f"validation_{k}": v for k, v in val.items()})
    best, fields = self.selector.observe(state.best, val, state.meta_params,
                                         state.meta_opt_state, state.iteration)
    record.update(fields)
    stage, restart = self.curriculum.after_validation(state.stage, fields["validation_score"],
                                                      fields["collapsed"])
    state = state._replace(best=best, stage=stage)
    if restart:  # the horizon advances; training restarts from the best state so far
      if self.selector.found(best):
        state = state._replace(meta_params=best["meta_params"],
                               meta_opt_state=selection.own_copy(best["meta_opt_state"]))
      state = state._replace(states=self.fresh_episode(
          state.meta_params, jax.random.fold_in(iteration_key, 0xC0)))
    if self.config.curriculum:
      record["horizon"] = self.curriculum.horizon(stage)
    return state

  def no_longer_improving(self, state: MetaTrainState) -> bool:
    """`config.patience` meta-steps since the best validation (none yet: since the start)."""
    patience = self.config.patience
    if patience is None or state.iteration < self.config.min_meta_iterations:
      return False
    return state.iteration - max(self.selector.best_iteration(state.best), 0) >= patience

  def finish(self, state: MetaTrainState, history, resumed_from) -> MetaTrainResult:
    found = self.selector.found(state.best)
    selected = self.local(self.selector.selected(state.best, state.meta_params))
    selected_iteration, selected_score = self.selector.selected_at(state.best)
    if found:
      status = "trained"
    else:
      status = "undertrained" if self.config.regularizer.kind == "none" else "collapsed"
    if self.run is not None:
      self.run.close()
      # Always exported; one that never validated well says so in its optimizer.json.
      metadata = None if found else {"status": status, "meta_step": selected_iteration,
                                     "validation_score": selected_score}
      metadata = _with_user_term(metadata, self.config.regularizer)
      self.run.export(self.lopt, selected, metadata=metadata)
      self.run.release()
    return MetaTrainResult(meta_params=selected, last_meta_params=self.local(state.meta_params),
                           best_score=self.selector.best_score(state.best),
                           best_iteration=self.selector.best_iteration(state.best),
                           history=history, num_skipped=state.num_skipped,
                           resumed_from=resumed_from, collapsed=not found, status=status,
                           selected_iteration=selected_iteration,
                           meta_steps_done=state.iteration)


def meta_train(lopt, task, config: MetaTrainConfig, *, run_dir: str | None = None,
               callback: Callable[[dict[str, Any]], None] | None = None,
               should_stop: Callable[[], bool] | None = None,
               progress: bool = False,
               on_improvement: Callable[[int, Any], None] | None = None) -> MetaTrainResult:
  """Meta-trains `lopt` on `task`.

  Args:
    lopt: a learned-optimizer architecture (e.g. `L2ODM()`).
    task: an optimizee from `flatl2o.tasks.get`.
    config: a `MetaTrainConfig`.
    run_dir: optional folder for `run.json`, checkpoints, `metrics.jsonl` and
      TensorBoard summaries (`flatl2o.meta.run_dir`); when it holds a checkpoint
      of the same configuration the run resumes from it, and at the end the
      selected optimizer is exported to `run_dir/optimizer`.
    callback: called with each logged metrics dict (progress display).
    progress: also print a line with an ETA to stderr every `log_every` meta-steps.
    should_stop: polled after every meta-step; True saves a checkpoint of the steps done
      and raises `MetaTrainingInterrupted` (the binaries wire it to SIGINT and SIGTERM):
      rerunning with the same run directory resumes without losing a step.
    on_improvement: called as `on_improvement(meta_step, meta_params)` each time a
      validation that did not collapse beats every earlier one (the selection changes).

  Returns:
    A `MetaTrainResult`.

  Raises:
    MetaTrainingDivergedError: `max_consecutive_skipped` non-finite meta-steps in a row.
    MetaTrainingInterrupted: `should_stop()` returned True.

  Example:

  >>> import flatl2o
  >>> lopt, task = flatl2o.optimizers.L2ODM(), flatl2o.tasks.get("quadratic", batch_size=4)
  >>> config = flatl2o.meta.MetaTrainConfig(
  ...     num_meta_iterations=4, unroll_length=5, num_inner_steps=10, meta_batch_size=2,
  ...     validation_every=2, validation_horizon=10, validation_seeds=2,
  ...     regularizer=flatl2o.meta.HessianTerm(alpha=0.1))
  >>> result = flatl2o.meta.meta_train(lopt, task, config)
  >>> tx = lopt.transform(result.meta_params)  # an optax transformation
  >>> result.meta_steps_done, result.best_iteration in (2, 4)
  (4, True)
  """
  callback = _with_progress(callback, config.num_meta_iterations) if progress else callback
  # The device count is part of the run's identity: the checkpointed inner
  # state is laid out per device.
  config = dataclasses.replace(config, num_devices=num_devices(config))
  parts = _Parts(lopt, task, config, run_dir)
  state, resumed_from = parts.start()
  start, total, history = state.iteration, config.num_meta_iterations, []
  tic = time.perf_counter()
  for iteration in range(start, total):
    if parts.no_longer_improving(state):
      break
    iteration_key = jax.random.fold_in(parts.base_key, iteration + 1)
    state, metrics = parts.step(state, iteration_key)
    done = iteration + 1
    state = parts.guard(state._replace(iteration=done), bool(metrics["finite"]), done)
    validate_now = done % config.validation_every == 0 or done == total
    if validate_now or done % config.log_every == 0 or done == total:
      record = {"iteration": done, **{k: float(v) for k, v in metrics.items()},
                "num_skipped": state.num_skipped, "num_resets": state.num_resets,
                "meta_steps_per_second": (done - start) / (time.perf_counter() - tic)}
      if validate_now:
        before = parts.selector.best_iteration(state.best)
        state = parts.validate(state, record, iteration_key)
        if on_improvement is not None and parts.selector.best_iteration(state.best) != before:
          on_improvement(done, parts.local(state.best["meta_params"]))
      history.append(record)
      if parts.run is not None:
        parts.run.write_metrics(record)
      if callback is not None:
        callback(record)
    stopping = should_stop is not None and done < total and _any_process(should_stop())
    if parts.run is not None and (done % config.checkpoint_every == 0 or stopping
                                  or done == total or parts.no_longer_improving(state)):
      parts.run.save(done, state.to_checkpoint())
    if stopping:
      _interrupt(parts, done)
  return parts.finish(state, history, resumed_from)


def _with_progress(callback, total: int):
  """`callback` preceded by a progress line with an ETA on stderr (what the binaries show)."""
  printer = progress_printer(total, lambda line: print(line, file=sys.stderr, flush=True))
  return printer if callback is None else (lambda r, c=callback: (printer(r), c(r)))


def _interrupt(parts, done: int):
  """Lets the run directory go (its checkpoint of `done` is saved) and raises the stop."""
  if parts.run is not None:
    parts.run.close()
    parts.run.release()
  raise MetaTrainingInterrupted(done, parts.run.checkpoint_directory
                                if parts.run is not None else None)
