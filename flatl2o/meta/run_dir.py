"""The run directory of a meta-training run: identity, resume, checkpoints, metrics.

  RUN_DIR/
    run.json        what the run is: architecture, task, configuration; a resumed
                    run must match it (except the settings in `NOT_IDENTITY`)
    versions.json   package versions and platform at the latest (re)start
    checkpoints/    orbax steps of the whole run state, the last few kept
    damaged_checkpoints/  steps that could not be restored, moved aside at resume
    metrics.jsonl   one JSON object per logged meta-step
    tensorboard/    the same scalars (tensorboardX: no TensorFlow needed)
    optimizer/      the exported learned optimizer, at the end (`flatl2o.checkpoints`)
    .lock           held by the process writing the folder (`folders.lock_folder`):
                    a second one is refused at once, naming the holder's PID and host

`RunDirectory(path, describe(lopt, task, config))` claims a folder: it writes
`run.json` into a new or empty one, accepts one holding the same description,
and refuses anything else before writing a byte. Checkpoints are written
synchronously; orbax finalises each step atomically, so a crash leaves the last
complete one.

In a multi-host run every process opens the same directory (on a filesystem
they all see): all of them write the orbax checkpoints, which orbax
coordinates, and only process 0 writes the rest.

Example:
  >>> run = RunDirectory("runs/x", describe(lopt, task, config))
  >>> state = run.restore(template)          # None when there is no checkpoint
  >>> run.save(step, state); run.write_metrics({"iteration": step, ...})
  >>> run.close()
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np

from flatl2o import atomic_files, checkpoints, environment, folders
from flatl2o.checkpoints import CheckpointError
from flatl2o.meta.config import MetaTrainConfig
from flatl2o.optimizers import base as lopt_base

# Settings that change how long a run goes or how often it reports, not what it
# computes: a run may be resumed (or extended) with other values of these. The
# fields say so themselves (metadata identity=False in `MetaTrainConfig`).
NOT_IDENTITY = tuple(f.name for f in dataclasses.fields(MetaTrainConfig)
                     if not f.metadata.get("identity", True))

# Where a checkpoint that cannot be restored is moved (outside orbax's view).
DAMAGED_DIR = "damaged_checkpoints"

_log = logging.getLogger(__name__)


def _is_primary() -> bool:
  return jax.process_index() == 0


def describe(lopt, task, config) -> dict[str, Any]:
  """What a run directory belongs to, as the JSON of `run.json`.

  Args:
    lopt: the learned-optimizer architecture (its name and hyper-parameters).
    task: the optimizee (its name, dataset and batch size).
    config: the `MetaTrainConfig`; the fields in `NOT_IDENTITY` are left out.

  Returns:
    A JSON-able dict with keys 'optimizer', 'task' and 'config'.
  """
  return {
      "optimizer": {"architecture": lopt.name,
                    "hparams": lopt_base.architecture_hparams(lopt)},
      "task": {"name": task.name, "dataset": task.dataset_name, "batch_size": task.batch_size},
      "config": _config_identity(config),
  }


def _config_identity(config) -> dict[str, Any]:
  identity = {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_IDENTITY}
  regularizer = identity.get("regularizer")
  if isinstance(regularizer, dict) and not regularizer.get("term_fields"):
    # A built-in term (or none) has no term_fields: run.json stays as older versions wrote it.
    regularizer.pop("term_fields", None)
  return identity


def first_difference(old, new, prefix: str = "") -> str:
  """The first differing key of two JSON values, as 'key was X, now Y'.

  Args:
    old: the recorded JSON value.
    new: the JSON value it is compared with.
    prefix: prepended to the key path (nested keys are joined with '.').

  Returns:
    The message, from `folders.first_difference`.
  """
  return folders.first_difference(old, new, prefix)


def _with_new_defaults(existing: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
  # A run.json of an older flatl2o lacks the config fields added since; they
  # did what their defaults do, so a resume with the defaults is the same run.
  defaults = json.loads(json.dumps(dataclasses.asdict(MetaTrainConfig()), default=list))
  defaults["num_devices"] = 1  # recorded resolved; an older flatl2o used one device
  old_config, new_config = existing.get("config"), new.get("config")
  if not isinstance(old_config, dict) or not isinstance(new_config, dict):
    return existing
  filled = dict(old_config)
  for k, v in new_config.items():
    if k not in filled and k in defaults and defaults[k] == v:
      filled[k] = v
  return {**existing, "config": filled}


def claim(path: str, description: dict[str, Any], write: bool = True) -> None:
  """Writes `run.json` into a new or empty folder, or checks the one there matches.

  `folders.claim_folder` with run.json; fields an older run.json lacks count as
  their defaults. With `write=False` (processes other than 0) it only checks.

  Args:
    path: the run directory.
    description: what the run is (`describe`), the content of run.json.
    write: write run.json when the folder is new or empty; False only checks.

  Raises:
    CheckpointError: run.json cannot be read, the folder holds other files but no
      run.json, or its run.json describes a different configuration.
  """
  try:
    folders.claim_folder(path, description, filename="run.json", normalize=_with_new_defaults,
                         write=write)
  except folders.FolderClaimError as e:
    if e.reason == "unreadable":
      raise CheckpointError(f"{str(e).rsplit('; ', 1)[0]}; use another run directory") from None
    if e.reason == "foreign":
      raise CheckpointError(f"run directory {path} is not empty and holds no run.json; use an "
                            "empty or new one") from None
    raise CheckpointError(
        f"run directory {path} belongs to a different configuration "
        f"({first_difference(e.found, e.identity)}); use another --run_dir or the original "
        "settings") from None


class RunCheckpointer:
  """Resumable run state under `run_dir/checkpoints` (orbax `CheckpointManager`)."""

  def __init__(self, run_dir: str, max_to_keep: int = 3):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  (slow import)
    self._ocp = ocp
    self.directory = os.path.join(os.path.abspath(run_dir), "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    """The newest checkpointed step.

    Returns:
      The step, or None when there is no checkpoint.
    """
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """The checkpointed steps.

    Returns:
      The steps on disk, in increasing order.
    """
    return sorted(self._manager.all_steps())

  def move_aside(self, step: int, to: str) -> str:
    """Moves step `step`'s folder to `to/STEP-TIMESTAMP` (kept, not deleted); returns it.

    Args:
      step: the checkpointed step to move.
      to: the folder it is moved into (created if missing).

    Returns:
      The path of the moved folder.
    """
    os.makedirs(to, exist_ok=True)
    target = os.path.join(to, f"{step}-{time.strftime('%Y%m%dT%H%M%S')}")
    os.replace(os.path.join(self.directory, str(step)), target)
    return target

  def reload(self) -> None:
    """Rereads the steps on disk (after one was moved aside)."""
    self._manager.reload()

  def save(self, step: int, state: Any) -> None:
    """Writes step `step`; a failed write (a full disk) raises `atomic_files.WriteError`.

    orbax writes a step into a temporary folder and renames it when complete,
    so a failed save leaves the steps before it as they were.

    Args:
      step: the meta-step the checkpoint is saved under.
      state: the run state, a pytree.

    Raises:
      atomic_files.WriteError: the write failed (its message says which earlier
        checkpoint is intact).
    """
    try:
      self._manager.save(step, args=self._ocp.args.StandardSave(state), force=True)
      self._manager.wait_until_finished()
    except Exception as e:  # orbax wraps the OSError of a full disk in several types.
      cause = e
      while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
      previous = [s for s in self._manager.all_steps() if s < step]
      kept = (f"the checkpoint of meta-step {max(previous)} is intact" if previous
              else "no earlier checkpoint exists")
      if cause is None:
        cause = OSError(None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
      raise atomic_files.write_failed(os.path.join(self.directory, str(step)), cause, kept) from None

  def restore(self, step: int, template: Any) -> Any:
    """Reads checkpoint `step`.

    Args:
      step: the checkpointed step.
      template: a pytree shaped like the saved state.

    Returns:
      The restored state, shaped like `template`.

    Raises:
      CheckpointError: the step cannot be restored (damaged, or of another
        configuration).
    """
    try:
      return self._manager.restore(step, args=self._ocp.args.StandardRestore(template))
    except Exception as e:  # orbax raises many types for a bad or foreign checkpoint.
      raise CheckpointError(
          f"checkpoint {step} in {self.directory} cannot be restored ({type(e).__name__}: "
          f"{str(e).splitlines()[0][:200]}); it belongs to another configuration or is "
          "damaged: use another run directory") from None

  def close(self) -> None:
    self._manager.close()


class MetricsWriter:
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
    atomic_files.write_jsonl(self.path, kept)
    self._file = open(self.path, "a")
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
    except ImportError:
      self._tb = None

  def write(self, record: dict[str, Any]) -> None:
    """Appends `record` to `metrics.jsonl` and its finite numbers to TensorBoard.

    Args:
      record: a JSON-able dict of one meta-step's metrics, with its `iteration`.

    Raises:
      atomic_files.WriteError: the line could not be written (the lines before it
        are intact).
    """
    try:
      self._file.write(json.dumps(record, sort_keys=True) + "\n")
      self._file.flush()
    except OSError as e:  # a line cut here is dropped at the next resume
      raise atomic_files.write_failed(self.path, e, "the lines before it are intact") from None
    if self._tb is not None:
      for k, v in record.items():
        if k != "iteration" and isinstance(v, (int, float)) and np.isfinite(v):
          self._tb.add_scalar(k, v, record["iteration"])

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()


class RunDirectory:
  """One claimed run directory: its checkpoints, metrics and final export."""

  def __init__(self, path: str, description: dict[str, Any]):
    self.primary = _is_primary()
    claim(path, description, write=False)  # a foreign folder is refused before the lock
    # One writer per run directory (process 0 of a multi-host run holds it); the
    # lock lasts while this object lives (`release()`, or the process ending).
    self._lock = folders.lock_folder(path, "run directory") if self.primary else None
    claim(path, description, write=self.primary)
    self.path = path
    if self.primary:
      atomic_files.write_json(os.path.join(path, "versions.json"), environment.describe())
    self._checkpointer = RunCheckpointer(path)
    self._writer: MetricsWriter | None = None

  @property
  def checkpoint_directory(self) -> str:
    return self._checkpointer.directory

  def latest_step(self) -> int | None:
    """The newest checkpointed step.

    Returns:
      The step, or None when there is no checkpoint.
    """
    return self._checkpointer.latest_step()

  def restore(self, template: Any) -> Any | None:
    """The newest restorable checkpoint shaped like `template`, or None when there is none.

    A newer checkpoint that cannot be restored (a missing or truncated file, a
    half-written step) is moved to `RUN_DIR/damaged_checkpoints/STEP-TIME`, with
    a one-line warning naming it and the step resumed from; `restored_step` says
    which step was restored.

    Args:
      template: a pytree shaped like the saved run state.

    Returns:
      The restored run state, or None when there is no checkpoint.

    Raises:
      CheckpointError: no checkpoint can be restored (nothing is moved then: a
        run whose every step fails is another configuration's, or all are lost).
    """
    self.restored_step = None
    steps = self._checkpointer.all_steps()[::-1]
    damaged = []
    for step in steps:
      try:
        tree = self._checkpointer.restore(step, template)
        break
      except CheckpointError as e:
        damaged.append((step, e))
    else:
      if not steps:
        return None
      newest, error = damaged[0]
      reason = str(error).split(" cannot be restored ", 1)[-1].split("; ", 1)[0]
      raise CheckpointError(
          f"no checkpoint in {self.checkpoint_directory} can be restored (steps "
          f"{', '.join(str(s) for s, _ in damaged)}; the newest, {newest}: {reason}); they "
          "belong to another configuration or are damaged: use another run directory")
    for bad, error in damaged:
      reason = str(error).split(" cannot be restored ", 1)[-1].split("; ", 1)[0]
      where = "left in place"
      if self.primary:
        where = "moved to " + self._checkpointer.move_aside(
            bad, os.path.join(self.path, DAMAGED_DIR))
      _log.warning("checkpoint %d in %s is damaged %s; resuming from checkpoint %d (%s)",
                   bad, self.checkpoint_directory, reason, step, where)
    if damaged:
      self._checkpointer.reload()
    self.restored_step = step
    return tree

  def save(self, step: int, state: Any) -> None:
    """Checkpoints the run state (`RunCheckpointer.save`).

    Args:
      step: the meta-step the checkpoint is saved under.
      state: the run state, a pytree.
    """
    self._checkpointer.save(step, state)

  def open_metrics(self, keep_through: int) -> None:
    """Starts `metrics.jsonl` / TensorBoard, dropping lines after `keep_through`.

    Args:
      keep_through: the last meta-step whose lines are kept (the restored step).
    """
    if self.primary:
      self._writer = MetricsWriter(self.path, keep_through)

  def write_metrics(self, record: dict[str, Any]) -> None:
    """Writes one metrics record (`MetricsWriter.write`) once `open_metrics` ran on process 0.

    Args:
      record: a JSON-able dict of one meta-step's metrics, with its `iteration`.
    """
    if self._writer is not None:
      self._writer.write(record)

  def close(self) -> None:
    self._checkpointer.close()
    if self._writer is not None:
      self._writer.close()

  def release(self) -> None:
    """Lets another process take the run directory (after `close()` and `export()`)."""
    if self._lock is not None:
      self._lock.release()

  def export(self, lopt, meta_params, metadata: dict[str, Any] | None = None) -> str:
    """Exports the learned optimizer to `RUN_DIR/optimizer` (with `metadata`, e.g. a
    collapsed or undertrained status, in its optimizer.json); returns that path.

    Args:
      lopt: the learned-optimizer architecture.
      meta_params: its meta-parameters.
      metadata: optional JSON-able facts kept in optimizer.json; only process 0 writes.

    Returns:
      The path of the export, `RUN_DIR/optimizer`.
    """
    path = os.path.join(self.path, "optimizer")
    if self.primary:
      checkpoints.save_optimizer(path, lopt, meta_params, metadata=metadata)
    return path
