"""Meta-training: fit a learned optimizer's meta-parameters by truncated unrolls.

Each meta-step takes one truncation of `unroll_length` inner steps on a vmapped
meta-batch of optimizees, differentiates the mean meta-loss w.r.t. the
meta-parameters (`jax.grad` through `lax.scan`) and applies an optax
meta-optimizer (global-norm clip, then Adam). Episodes of `num_inner_steps`
start from fresh optimizee initialisations. Every key is derived from the
seed and the meta-step index, so a resumed run repeats an uninterrupted one.

A meta-step whose meta-loss or meta-gradient is not finite leaves the
meta-parameters and meta-optimizer state unchanged (it is counted as skipped);
a meta-batch holding a blown-up optimizee is restarted at the next meta-step;
`max_consecutive_skipped` skipped steps in a row stop the run with
`MetaTrainingDivergedError`, leaving the last checkpoint intact.

Every `validation_every` meta-steps the learned optimizer trains fresh
optimizees for `validation_horizon` steps and is scored on the validation split
(accuracy, or minus the loss for tasks without accuracy). The best-scoring
meta-parameters are what `meta_train` returns as `theta`: model selection by
validation at the meta-test horizon, never by meta-loss.

Example:
  >>> lopt = flatl2o.optimizers.L2ODM()
  >>> task = flatl2o.tasks.get("mlp_sigmoid", dataset="digits")
  >>> result = flatl2o.meta.meta_train(lopt, task, flatl2o.meta.MetaTrainConfig())
  >>> tx = lopt.transform(result.theta)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flatl2o import checkpoints, report
from flatl2o.meta import inner
from flatl2o.meta.config import MetaTrainConfig
from flatl2o.optimizers import base as lopt_base


@dataclasses.dataclass
class MetaTrainResult:
  """What meta-training produced.

  Attributes:
    theta: the meta-parameters with the best validation score.
    last_theta: the meta-parameters after the last meta-step.
    best_score: validation score of `theta` (higher is better).
    best_iteration: meta-step at which `theta` was validated.
    history: one dict of metrics per logged or validated meta-step.
    num_skipped: meta-steps skipped because of a non-finite loss or gradient.
    resumed_from: meta-step a run directory was resumed from, or None.
    collapsed: True when every validation found the optimizer no longer
      lowering the training loss (`COLLAPSE_RATIO`); `theta` is then the last
      validated meta-parameters and nothing is exported.
  """

  theta: Any
  last_theta: Any
  best_score: float
  best_iteration: int
  history: list[dict[str, Any]]
  num_skipped: int
  resumed_from: int | None = None
  collapsed: bool = False


def meta_optimizer(config: MetaTrainConfig) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(config.meta_grad_clip),
                     optax.adam(config.meta_learning_rate))


@functools.partial(jax.jit, static_argnames=("lopt", "config"))
def init_states(lopt, config: MetaTrainConfig, task, meta_params, key):
  return inner.init_inner(lopt, task, meta_params,
                          jax.random.split(key, config.meta_batch_size))


@functools.partial(jax.jit, static_argnames=("lopt", "config"), donate_argnums=(4, 5))
def meta_step(lopt, config: MetaTrainConfig, task, meta_params, meta_opt_state, states, key):
  """One truncation on the meta-batch and one meta-optimizer update (non-finite guarded)."""
  (loss, (new_states, traces)), grads = jax.value_and_grad(
      lambda theta: inner.unroll(lopt, task, config, theta, states, key), has_aux=True)(
          meta_params)
  grad_norm = optax.global_norm(grads)
  updates, new_opt_state = meta_optimizer(config).update(grads, meta_opt_state, meta_params)
  new_params = optax.apply_updates(meta_params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  metrics = {"meta_loss": loss, "meta_grad_norm": grad_norm, "finite": finite,
             "inner_loss_last": traces["losses"][-1].mean(),
             "regularizer": traces["regularizer"].mean()}
  return (keep(new_params, meta_params), keep(new_opt_state, meta_opt_state), new_states,
          metrics)


@jax.jit
def all_finite(tree) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


class MetaTrainingDivergedError(RuntimeError):
  """Too many consecutive meta-steps had a non-finite meta-loss or meta-gradient."""


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


# Settings that change how long a run goes or how often it reports, not what it
# computes: a run may be resumed (or extended) with other values of these.
_NOT_IDENTITY = ("num_meta_iterations", "checkpoint_every", "log_every",
                 "max_consecutive_skipped")


def run_description(lopt, task, config: MetaTrainConfig) -> dict[str, Any]:
  """What a run directory belongs to; a resumed run must match it (but `_NOT_IDENTITY`)."""
  data = getattr(task, "data", None)
  return {
      "optimizer": {"architecture": lopt.name, "hparams": lopt_base.hparams(lopt)},
      "task": {"name": task.name, "dataset": data.name if data is not None else None,
               "batch_size": task.batch_size},
      "config": {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_IDENTITY},
  }


def _check_run_dir(run_dir: str, description: dict[str, Any]) -> None:
  path = os.path.join(run_dir, "run.json")
  if os.path.exists(path):
    try:
      with open(path) as f:
        existing = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise checkpoints.CheckpointError(f"{path} is unreadable ({e}); use another run "
                                        "directory") from None
    if existing != description:
      diffs = _first_difference(existing, json.loads(json.dumps(description)))
      raise checkpoints.CheckpointError(
          f"run directory {run_dir} belongs to a different configuration ({diffs}); "
          "use another --run_dir or the original settings")
  elif os.path.isdir(run_dir) and os.listdir(run_dir):
    raise checkpoints.CheckpointError(
        f"run directory {run_dir} is not empty and holds no run.json; use an empty or new one")
  else:
    report.write_json(path, description)


def environment() -> dict[str, Any]:
  """Package versions and platform, recorded in the run directory at every (re)start."""
  import importlib.metadata as md  # pylint: disable=g-import-not-at-top
  import platform  # pylint: disable=g-import-not-at-top
  versions = {}
  for package in ("flatl2o", "jax", "jaxlib", "optax", "flax", "chex", "orbax-checkpoint",
                  "numpy", "tensorflow-datasets"):
    try:
      versions[package] = md.version(package)
    except md.PackageNotFoundError:
      versions[package] = None
  return {"python": platform.python_version(), "platform": platform.platform(),
          "backend": jax.default_backend(), "packages": versions}


def _first_difference(old, new, prefix="") -> str:
  if isinstance(old, dict) and isinstance(new, dict):
    for k in sorted(set(old) | set(new)):
      if old.get(k) != new.get(k):
        return _first_difference(old.get(k), new.get(k), f"{prefix}{k}.")
  return f"{prefix.rstrip('.')} was {old!r}, now {new!r}"


def meta_train(lopt, task, config: MetaTrainConfig, *, run_dir: str | None = None,
               callback: Callable[[dict[str, Any]], None] | None = None) -> MetaTrainResult:
  """Meta-trains `lopt` on `task`.

  Args:
    lopt: a learned-optimizer architecture (e.g. `L2ODM()`).
    task: an optimizee from `flatl2o.tasks.get`.
    config: a `MetaTrainConfig`.
    run_dir: optional folder for `run.json`, checkpoints, `metrics.jsonl` and
      TensorBoard summaries; when it holds a checkpoint of the same
      configuration the run resumes from it, and at the end the selected
      optimizer is exported to `run_dir/optimizer`.
    callback: called with each logged metrics dict (progress display).

  Returns:
    A `MetaTrainResult`.
  """
  base_key = jax.random.key(config.seed)
  theta = lopt.init(jax.random.fold_in(base_key, 0x7E7A))
  meta_opt_state = meta_optimizer(config).init(theta)
  validation_keys = jax.random.split(jax.random.fold_in(base_key, 0x7A11D), config.validation_seeds)
  states = None
  best = {"theta": theta, "score": jnp.float32(-jnp.inf), "iteration": jnp.int32(-1)}
  num_skipped = consecutive_skipped = num_resets = 0
  start = 0
  history: list[dict[str, Any]] = []

  checkpointer = writer = None
  resumed_from = None
  if run_dir is not None:
    _check_run_dir(run_dir, run_description(lopt, task, config))
    report.write_json(os.path.join(run_dir, "versions.json"), environment())
    checkpointer = checkpoints.RunCheckpointer(run_dir)
    latest = checkpointer.latest_step()
    if latest is not None:
      template = _run_state(theta, meta_opt_state,
                            init_states(lopt, config, task, theta, base_key), best, 0, 0, 0, 0)
      restored = checkpointer.restore(latest, template)
      theta, meta_opt_state, states = (restored["theta"], restored["meta_opt_state"],
                                       restored["states"])
      best = restored["best"]
      num_skipped = int(restored["num_skipped"])
      consecutive_skipped = int(restored["consecutive_skipped"])
      num_resets = int(restored["num_resets"])
      start = resumed_from = int(restored["iteration"])
      if start % config.truncations_per_episode == 0:
        states = None  # a new episode starts here anyway
    writer = _MetricsWriter(run_dir, keep_through=start)

  last_collapsed = None
  tic = time.perf_counter()
  for iteration in range(start, config.num_meta_iterations):
    iteration_key = jax.random.fold_in(base_key, iteration + 1)
    init_key, step_key = jax.random.split(iteration_key)
    if iteration % config.truncations_per_episode == 0 or states is None:
      states = init_states(lopt, config, task, theta, init_key)
    elif not bool(all_finite(states.params)):
      # An optimizee blew up in the last truncation (that meta-step was skipped):
      # restart the meta-batch here rather than let it poison the episode.
      states = init_states(lopt, config, task, theta, init_key)
      num_resets += 1
    theta, meta_opt_state, states, metrics = meta_step(
        lopt, config, task, theta, meta_opt_state, states, step_key)
    done = iteration + 1
    log_now = done % config.log_every == 0 or done == config.num_meta_iterations
    validate_now = done % config.validation_every == 0 or done == config.num_meta_iterations
    if bool(metrics["finite"]):
      consecutive_skipped = 0
    else:
      num_skipped += 1
      consecutive_skipped += 1
      if consecutive_skipped >= config.max_consecutive_skipped:
        if checkpointer is not None:
          checkpointer.close()
          writer.close()
        where = (f"; the last good checkpoint (meta-step {checkpointer.latest_step()}) is in "
                 f"{checkpointer.directory}" if checkpointer is not None
                 and checkpointer.latest_step() is not None else "")
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
               validate(lopt, task, theta, validation_keys, config.validation_horizon).items()}
        score = score_of(val)
        record.update({f"validation_{k}": v for k, v in val.items()})
        record["validation_score"] = score
        record["collapsed"] = collapsed(val)
        if record["collapsed"]:
          last_collapsed = theta
        elif score > float(best["score"]):
          best = {"theta": theta, "score": jnp.float32(score), "iteration": jnp.int32(done)}
        record["best_validation_score"] = float(best["score"])
      history.append(record)
      if writer is not None:
        writer.write(record)
      if callback is not None:
        callback(record)
    if checkpointer is not None and (done % config.checkpoint_every == 0
                                     or done == config.num_meta_iterations):
      checkpointer.save(done, _run_state(theta, meta_opt_state, states, best, done,
                                         num_skipped, consecutive_skipped, num_resets))

  is_collapsed = int(best["iteration"]) < 0
  selected = best["theta"] if not is_collapsed else (
      last_collapsed if last_collapsed is not None else theta)
  if checkpointer is not None:
    checkpointer.close()
    writer.close()
    if not is_collapsed:
      checkpoints.save_optimizer(os.path.join(run_dir, "optimizer"), lopt, selected)
  return MetaTrainResult(theta=selected, last_theta=theta, best_score=float(best["score"]),
                         best_iteration=int(best["iteration"]), history=history,
                         num_skipped=num_skipped, resumed_from=resumed_from,
                         collapsed=is_collapsed)


def _run_state(theta, meta_opt_state, states, best, iteration, num_skipped,
               consecutive_skipped, num_resets):
  return {"theta": theta, "meta_opt_state": meta_opt_state, "states": states, "best": best,
          "iteration": jnp.int32(iteration), "num_skipped": jnp.int32(num_skipped),
          "consecutive_skipped": jnp.int32(consecutive_skipped),
          "num_resets": jnp.int32(num_resets)}


class _MetricsWriter:
  """`metrics.jsonl` (one object per logged meta-step) and TensorBoard summaries.

  On resume, lines past the restored meta-step are dropped so the file reads as
  one uninterrupted run.
  """

  def __init__(self, run_dir: str, keep_through: int):
    self.path = os.path.join(run_dir, "metrics.jsonl")
    kept = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        for line in f:
          try:
            record = json.loads(line)
          except json.JSONDecodeError:
            break  # a line cut by a crash ends the readable part
          if record.get("iteration", 0) <= keep_through:
            kept.append(record)
    report.write_jsonl(self.path, kept)
    self._file = open(self.path, "a")
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
    except ImportError:
      self._tb = None

  def write(self, record: dict[str, Any]) -> None:
    self._file.write(json.dumps(record, sort_keys=True) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in record.items():
        if k != "iteration" and isinstance(v, (int, float)) and np.isfinite(v):
          self._tb.add_scalar(k, v, record["iteration"])

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()
