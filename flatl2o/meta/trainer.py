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
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from flatl2o.meta import imitation, inner, sharding
from flatl2o.meta import run_dir as run_dir_lib
from flatl2o.meta.config import MetaTrainConfig


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
      last validated meta-parameters and nothing is exported.
  """

  meta_params: Any
  last_meta_params: Any
  best_score: float
  best_iteration: int
  history: list[dict[str, Any]]
  num_skipped: int
  resumed_from: int | None = None
  collapsed: bool = False

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


def meta_optimizer(config: MetaTrainConfig) -> optax.GradientTransformation:
  """The optax optimizer of the meta-parameters: global-norm clip, then Adam."""
  return optax.chain(optax.clip_by_global_norm(config.meta_grad_clip),
                     optax.adam(config.meta_learning_rate))


def num_devices(config: MetaTrainConfig) -> int:
  """Devices `config`'s meta-batch is split over here (`sharding.resolve_num_devices`)."""
  return sharding.resolve_num_devices(config.num_devices, config.meta_batch_size)


_P = PartitionSpec


def _each_but_step(fn, states: inner.InnerState) -> inner.InnerState:
  return states._replace(**{k: fn(v) for k, v in states._asdict().items() if k != "step"})


def _state_specs(states: inner.InnerState) -> inner.InnerState:
  # Every leaf is split by device along its leading (stacked) axis, but the
  # episode step, which all devices share.
  split = lambda tree: jax.tree.map(lambda _: _P(sharding.AXIS), tree)
  return inner.InnerState(split(states.params), split(states.opt_state),
                          _P(sharding.AXIS), _P(), split(states.scale), split(states.anchor))


@functools.partial(jax.jit, static_argnames=("lopt", "config"))
def init_meta_batch(lopt, config: MetaTrainConfig, task, meta_params, key) -> inner.InnerState:
  """`config.meta_batch_size` fresh optimizees of `task` and the optimizer state for them.

  Split over `num_devices(config)` devices when that is more than one: each
  leaf but `step` then has a leading device axis (`flatl2o.meta.sharding`).
  """
  keys = jax.random.split(key, config.meta_batch_size)
  devices = num_devices(config)
  if devices == 1:
    return inner.init_inner(lopt, task, meta_params, keys, config)

  def local(task, meta_params, keys):
    return _each_but_step(sharding.stack,
                          inner.init_inner(lopt, task, meta_params, keys, config))

  shapes = jax.eval_shape(lambda: inner.init_inner(lopt, task, meta_params, keys[:1], config))
  return jax.shard_map(local, mesh=sharding.mesh(devices),
                       in_specs=(_P(), _P(), _P(sharding.AXIS)),
                       out_specs=_state_specs(shapes))(task, meta_params, keys)


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
def meta_step(lopt, config: MetaTrainConfig, task, meta_params, meta_opt_state, states, key):
  """One truncation on the meta-batch and one meta-optimizer update (non-finite guarded).

  Returns `(meta_params, meta_opt_state, states, metrics)`; when the meta-loss or
  meta-gradient is not finite the first two come back unchanged. With more than
  one device (`num_devices(config)`, states from `init_meta_batch`) each device
  unrolls its share under `shard_map` and the meta-loss is averaged across them.
  """
  devices = num_devices(config)
  if devices == 1:
    return _meta_step(lopt, config, task, meta_params, meta_opt_state, states, key)
  local_batch = config.meta_batch_size // devices

  def local(task, meta_params, meta_opt_state, states, key):
    offset = jax.lax.axis_index(sharding.AXIS) * local_batch
    meta_params, meta_opt_state, states, metrics = _meta_step(
        lopt, config, task, meta_params, meta_opt_state,
        _each_but_step(sharding.unstack, states), key, offset)
    return meta_params, meta_opt_state, _each_but_step(sharding.stack, states), metrics

  specs = _state_specs(states)
  return jax.shard_map(local, mesh=sharding.mesh(devices),
                       in_specs=(_P(), _P(), _P(), specs, _P()),
                       out_specs=(_P(), _P(), specs, _P()))(
                           task, meta_params, meta_opt_state, states, key)


def _meta_step(lopt, config, task, meta_params, meta_opt_state, states, key, offset=None):
  """`meta_step` on the optimizees in `states`: all of them, or a device's share."""
  average = (lambda x: x) if offset is None else (
      lambda x: jax.lax.pmean(x, sharding.AXIS))

  def loss_fn(p):
    loss, aux = inner.unroll(lopt, task, config, p, states, key, offset)
    return average(loss), aux  # the meta-batch's mean, so grad is its meta-gradient

  (loss, (new_states, traces)), grads = jax.value_and_grad(loss_fn, has_aux=True)(meta_params)
  meta_params, meta_opt_state, metrics = _apply_meta_gradient(config, loss, grads, meta_params,
                                                              meta_opt_state)
  metrics.update(inner_loss_last=average(traces["losses"][-1].mean()),
                 regularizer=average(traces["regularizer"].mean()),
                 imitation=jnp.float32(0.0))
  return meta_params, meta_opt_state, new_states, metrics


@functools.partial(jax.jit, static_argnames=("lopt", "config"), donate_argnums=(4,))
def imitation_step(lopt, config: MetaTrainConfig, task, meta_params, meta_opt_state, key):
  """One meta-optimizer update on the imitation loss (`flatl2o.meta.imitation`).

  Returns `(meta_params, meta_opt_state, metrics)`, non-finite guarded like `meta_step`.
  """
  loss, grads = jax.value_and_grad(
      lambda p: imitation.imitation_loss(lopt, task, config, p, key))(meta_params)
  meta_params, meta_opt_state, metrics = _apply_meta_gradient(config, loss, grads, meta_params,
                                                              meta_opt_state)
  metrics["imitation"] = jnp.float32(1.0)
  return meta_params, meta_opt_state, metrics


@jax.jit
def all_finite(tree) -> jax.Array:
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
  """Mean validation metrics of fresh optimizees trained `horizon` steps with `meta_params`."""

  params, losses = inner.rollout(lopt, task, meta_params, keys, horizon)
  metrics = jax.vmap(lambda p: task.evaluate(p, "validation"))(params)
  metrics = jax.tree.map(jnp.mean, metrics)
  window = max(1, horizon // 10)
  metrics["initial_train_loss"] = losses[:window].mean()
  metrics["final_train_loss"] = losses[-window:].mean()
  return metrics


# An optimizer whose validation runs end above this fraction of their starting
# training loss has stopped optimizing (e.g. a too-large flatness coefficient
# taught it to stay put, which is "flat" and useless); it is never selected.
COLLAPSE_RATIO = 0.9


def collapsed(metrics: dict[str, float]) -> bool:
  final, initial = metrics["final_train_loss"], metrics["initial_train_loss"]
  return not np.isfinite(final) or final > COLLAPSE_RATIO * initial


def score_of(metrics: dict[str, float]) -> float:
  """Higher is better: validation accuracy, or minus the validation loss."""
  if "accuracy" in metrics:
    value = metrics["accuracy"]
  else:
    value = -metrics["loss"]
  return float(value) if np.isfinite(value) else -np.inf


def _run_state(meta_params, meta_opt_state, states, best, iteration, num_skipped,
               consecutive_skipped, num_resets, stage) -> dict[str, Any]:
  """Everything a resumed run needs, as one pytree (what a checkpoint holds).

  Counters are NumPy scalars: orbax cannot save a one-device array in a
  multi-host run, and these are the same on every process anyway.
  """
  return {"meta_params": meta_params, "meta_opt_state": meta_opt_state, "states": states,
          "best": best, "iteration": np.asarray(iteration, np.int32),
          "num_skipped": np.asarray(num_skipped, np.int32),
          "consecutive_skipped": np.asarray(consecutive_skipped, np.int32),
          "num_resets": np.asarray(num_resets, np.int32),
          "stage": {"index": np.asarray(stage["index"], np.int32),
                    "best_score": np.asarray(stage["best_score"], np.float32)}}


def _copy(tree):
  # The meta-step donates the meta-optimizer state: a kept copy needs its own buffers.
  return jax.tree.map(jnp.copy, tree)


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
  """A `meta_train` callback: one line per logged meta-step, with speed and ETA, to `emit`."""
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


def meta_train(lopt, task, config: MetaTrainConfig, *, run_dir: str | None = None,
               callback: Callable[[dict[str, Any]], None] | None = None,
               should_stop: Callable[[], bool] | None = None,
               progress: bool = False) -> MetaTrainResult:
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
    progress: print a progress line with an ETA to stderr every `log_every`
      meta-steps (what the binaries show), in addition to `callback`.
    should_stop: polled after every meta-step; when it returns True the run
      saves a checkpoint of the meta-steps done and raises
      `MetaTrainingInterrupted` (the binaries wire it to SIGINT and SIGTERM), so
      rerunning with the same run directory resumes without losing a step.

  Returns:
    A `MetaTrainResult`.

  Raises:
    MetaTrainingDivergedError: `max_consecutive_skipped` non-finite meta-steps in a row.
    MetaTrainingInterrupted: `should_stop()` returned True.
  """
  if progress:
    printer = progress_printer(config.num_meta_iterations,
                               lambda line: print(line, file=sys.stderr, flush=True))
    callback = printer if callback is None else (lambda r, c=callback: (printer(r), c(r)))
  # The device count is part of the run's identity: the checkpointed inner
  # state is laid out per device.
  config = dataclasses.replace(config, num_devices=num_devices(config))
  compiled = config.for_compilation()
  if config.num_devices > 1:
    mesh = sharding.mesh(config.num_devices)
    place, local = (lambda tree: sharding.replicate(tree, mesh)), sharding.local_copy
  else:
    place = local = lambda tree: tree
  base_key = jax.random.key(config.seed)
  meta_params = place(lopt.init(jax.random.fold_in(base_key, 0x7E7A)))
  meta_opt_state = place(meta_optimizer(config).init(meta_params))
  validation_keys = jax.random.split(jax.random.fold_in(base_key, 0x7A11D), config.validation_seeds)
  states = None
  episode_step = 0  # inner steps of the current episode, kept on the host (== states.step)
  best = {"meta_params": meta_params, "score": np.asarray(-np.inf, np.float32),
          "iteration": np.asarray(-1, np.int32)}
  if config.curriculum:  # a stage advance restarts from the best meta-optimizer state too
    best["meta_opt_state"] = _copy(meta_opt_state)
  stage = {"index": 0, "best_score": -np.inf}
  num_skipped = consecutive_skipped = num_resets = 0
  start = 0
  history: list[dict[str, Any]] = []

  run = None
  resumed_from = None
  if run_dir is not None:
    run = run_dir_lib.RunDirectory(run_dir, run_dir_lib.describe(lopt, task, config))
    if run.latest_step() is not None:
      template = _run_state(meta_params, meta_opt_state,
                            init_meta_batch(lopt, compiled, task, meta_params, base_key), best,
                            0, 0, 0, 0, stage)
      restored = run.restore(template)
      meta_params, meta_opt_state, states = (place(restored["meta_params"]),
                                             place(restored["meta_opt_state"]),
                                             restored["states"])
      episode_step = int(states.step)
      best = {**restored["best"], "meta_params": place(restored["best"]["meta_params"])}
      if "meta_opt_state" in best:
        best["meta_opt_state"] = place(best["meta_opt_state"])
      num_skipped = int(restored["num_skipped"])
      consecutive_skipped = int(restored["consecutive_skipped"])
      num_resets = int(restored["num_resets"])
      stage = {"index": int(restored["stage"]["index"]),
               "best_score": float(restored["stage"]["best_score"])}
      start = resumed_from = int(restored["iteration"])
    run.open_metrics(keep_through=start)

  last_collapsed = None
  tic = time.perf_counter()
  for iteration in range(start, config.num_meta_iterations):
    iteration_key = jax.random.fold_in(base_key, iteration + 1)
    init_key, step_key = jax.random.split(iteration_key)
    horizon = config.horizons[stage["index"]]
    stage_config = compiled.at_horizon(horizon)
    if states is None or episode_step >= horizon:
      states = init_meta_batch(lopt, compiled, task, meta_params, init_key)
      episode_step = 0
    if config.imitation_ratio > 0 and float(jax.random.uniform(
        jax.random.fold_in(iteration_key, 0x1317))) < config.imitation_ratio:
      # An imitation meta-step: its own Adam trajectory; the episode waits.
      meta_params, meta_opt_state, metrics = imitation_step(
          lopt, stage_config, task, meta_params, meta_opt_state, step_key)
    else:
      if not bool(all_finite(states.params)):
        # An optimizee blew up in the last truncation (that meta-step was skipped):
        # restart the meta-batch here rather than let it poison the episode.
        states = init_meta_batch(lopt, compiled, task, meta_params, init_key)
        episode_step = 0
        num_resets += 1
      meta_params, meta_opt_state, states, metrics = meta_step(
          lopt, stage_config, task, meta_params, meta_opt_state, states, step_key)
      episode_step += config.unroll_length
    done = iteration + 1
    log_now = done % config.log_every == 0 or done == config.num_meta_iterations
    validate_now = done % config.validation_every == 0 or done == config.num_meta_iterations
    if bool(metrics["finite"]):
      consecutive_skipped = 0
    else:
      num_skipped += 1
      consecutive_skipped += 1
      if consecutive_skipped >= config.max_consecutive_skipped:
        where = ""
        if run is not None:
          run.close()
          if run.latest_step() is not None:
            where = (f"; the last good checkpoint (meta-step {run.latest_step()}) is in "
                     f"{run.checkpoint_directory}")
        raise MetaTrainingDivergedError(
            f"meta-training diverged: {consecutive_skipped} consecutive meta-steps (up to "
            f"meta-step {done}) had a non-finite meta-loss or meta-gradient and were skipped"
            f"{where}; lower the meta learning rate or the flatness coefficients")
    if log_now or validate_now:
      record = {"iteration": done, **{k: float(v) for k, v in metrics.items()},
                "num_skipped": num_skipped, "num_resets": num_resets,
                "meta_steps_per_second": (done - start) / (time.perf_counter() - tic)}
      if validate_now:
        val = {k: float(v) for k, v in
               validate(lopt, task, local(meta_params), validation_keys,
                        config.validation_horizon).items()}
        score = score_of(val)
        record.update({f"validation_{k}": v for k, v in val.items()})
        record["validation_score"] = score
        record["collapsed"] = collapsed(val)
        if record["collapsed"]:
          last_collapsed = meta_params
        elif score > float(best["score"]):
          best = {"meta_params": meta_params, "score": np.asarray(score, np.float32),
                  "iteration": np.asarray(done, np.int32)}
          if config.curriculum:
            best["meta_opt_state"] = _copy(meta_opt_state)
        record["best_validation_score"] = float(best["score"])
        if config.curriculum:
          improved = not record["collapsed"] and score > stage["best_score"]
          if improved:
            stage["best_score"] = score
          elif stage["index"] + 1 < len(config.horizons):
            # The horizon advances; training restarts from the best state so far.
            stage = {"index": stage["index"] + 1, "best_score": -np.inf}
            if int(best["iteration"]) >= 0:
              meta_params, meta_opt_state = best["meta_params"], _copy(best["meta_opt_state"])
            states = init_meta_batch(lopt, compiled, task, meta_params,
                                     jax.random.fold_in(iteration_key, 0xC0))
            episode_step = 0
          record["horizon"] = config.horizons[stage["index"]]
      history.append(record)
      if run is not None:
        run.write_metrics(record)
      if callback is not None:
        callback(record)
    stopping = (should_stop is not None and done < config.num_meta_iterations
                and _any_process(should_stop()))
    if run is not None and (done % config.checkpoint_every == 0 or stopping
                            or done == config.num_meta_iterations):
      run.save(done, _run_state(meta_params, meta_opt_state, states, best, done,
                                num_skipped, consecutive_skipped, num_resets, stage))
    if stopping:
      if run is not None:
        run.close()
      raise MetaTrainingInterrupted(done, run.checkpoint_directory if run is not None else None)

  is_collapsed = int(best["iteration"]) < 0
  selected = best["meta_params"] if not is_collapsed else (
      last_collapsed if last_collapsed is not None else meta_params)
  if run is not None:
    run.close()
    if not is_collapsed:
      run.export(lopt, local(selected))
  return MetaTrainResult(meta_params=local(selected), last_meta_params=local(meta_params),
                         best_score=float(best["score"]),
                         best_iteration=int(best["iteration"]), history=history,
                         num_skipped=num_skipped, resumed_from=resumed_from,
                         collapsed=is_collapsed)
