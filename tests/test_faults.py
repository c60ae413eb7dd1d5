"""Faults a long study meets: two writers, a damaged checkpoint, a full disk.

The fast tests work in process (a second process, where one is needed, is a
small Python child that holds a folder's lock); the binary end-to-end checks
are marked slow.
"""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized
from orbax.checkpoint._src.path import atomicity

from flatl2o import checkpoints, folders, optimizers, report
from flatl2o.checkpoints import CheckpointError
from flatl2o.meta import run_dir as run_dir_lib
from flatl2o.study import cells as cells_lib
from flatl2o.study.config import StudyConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESCRIPTION = {"optimizer": "test", "config": {"seed": 0}}

_HOLDER = """
import sys
from flatl2o import folders
lock = folders.lock_folder(sys.argv[1], "run directory")
print("held", flush=True)
sys.stdin.read()
"""


def _tree(folder):
  """Every file under `folder` with its size and mtime (to see that nothing was touched)."""
  out = {}
  for root, _, files in os.walk(folder):
    for f in files:
      p = os.path.join(root, f)
      out[os.path.relpath(p, folder)] = (os.path.getsize(p), os.stat(p).st_mtime_ns)
  return out


class Holder:
  """A child process holding `path`'s lock until `stop()` (or SIGKILL)."""

  def __init__(self, path):
    self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, path], cwd=ROOT,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert self.proc.stdout.readline().strip() == "held"

  def stop(self):
    if self.proc.poll() is None:
      self.proc.stdin.close()
      self.proc.wait(timeout=30)

  def kill(self):
    self.proc.send_signal(signal.SIGKILL)
    self.proc.wait(timeout=30)


def _state(step):
  return {"w": jnp.arange(64.0) * step, "step": jnp.int32(step)}


def _template():
  return {"w": jnp.zeros(64), "step": jnp.int32(0)}


class LockTest(absltest.TestCase):

  def test_second_process_is_refused_naming_the_holder_and_touches_nothing(self):
    path = os.path.join(self.create_tempdir().full_path, "run")
    run = run_dir_lib.RunDirectory(path, DESCRIPTION)
    run.save(1, _state(1))
    run.close()
    run.release()
    holder = Holder(path)
    try:
      before = _tree(path)
      with self.assertRaises(folders.FolderLockedError) as e:
        run_dir_lib.RunDirectory(path, DESCRIPTION)
      self.assertEqual(
          str(e.exception), f"run directory {path} is in use by PID {holder.proc.pid} on host "
          f"{os.uname().nodename}; wait for it or use another run directory")
      self.assertIsInstance(e.exception, ValueError)  # the binaries: one line, exit 2
      self.assertEqual(_tree(path), before)
    finally:
      holder.stop()
    run = run_dir_lib.RunDirectory(path, DESCRIPTION)  # free once the holder ends
    self.assertEqual(run.latest_step(), 1)
    run.close()
    run.release()

  def test_a_killed_holder_leaves_no_stale_lock(self):
    path = os.path.join(self.create_tempdir().full_path, "run")
    holder = Holder(path)
    with self.assertRaises(folders.FolderLockedError):
      folders.lock_folder(path)
    holder.kill()
    self.assertTrue(os.path.exists(os.path.join(path, folders.LOCK_FILE)))
    run = run_dir_lib.RunDirectory(path, DESCRIPTION)  # the lock file alone is no claim
    with open(os.path.join(path, folders.LOCK_FILE)) as f:
      self.assertEqual(json.load(f)["pid"], os.getpid())
    run.close()
    run.release()

  def test_study_folder_is_locked_and_nested_run_directories_are_not_blocked(self):
    path = os.path.join(self.create_tempdir().full_path, "study")
    config = StudyConfig(preset="smoke")
    study = cells_lib.Cells(path, config)
    # A meta-training run directory inside the study folder has its own lock.
    run = run_dir_lib.RunDirectory(os.path.join(path, "meta", "x"), DESCRIPTION)
    run.close()
    run.release()
    self.assertTrue(cells_lib.Cells(path, config))  # the same process may reopen it
    study.release()
    holder = Holder(path)
    try:
      with self.assertRaisesRegex(folders.FolderLockedError,
                                  f"^run directory {path} is in use by PID {holder.proc.pid} "):
        cells_lib.Cells(path, config)
    finally:
      holder.stop()

  def test_another_configuration_is_refused_before_the_lock(self):
    path = os.path.join(self.create_tempdir().full_path, "run")
    run = run_dir_lib.RunDirectory(path, DESCRIPTION)
    run.close()
    run.release()
    os.remove(os.path.join(path, folders.LOCK_FILE))
    before = _tree(path)
    with self.assertRaisesRegex(CheckpointError, "belongs to a different configuration"):
      run_dir_lib.RunDirectory(path, {**DESCRIPTION, "config": {"seed": 1}})
    self.assertEqual(_tree(path), before)  # no .lock written into another run's folder


def _damage(path, how):
  """Damages step 3 of `path`'s checkpoints `how`; returns what the warning should name."""
  step = os.path.join(path, "checkpoints", "3")
  data = [os.path.join(step, "default", "d", f) for f in os.listdir(os.path.join(step, "default",
                                                                                  "d"))]
  biggest = max(data, key=os.path.getsize)
  if how == "deleted":
    os.remove(os.path.join(step, "default", "manifest.ocdbt"))
  elif how == "truncated":
    with open(biggest, "r+b") as f:
      f.truncate(os.path.getsize(biggest) // 2)
  elif how == "half_written":  # a step folder that holds only some of its files
    for f in data:
      os.remove(f)
  return 3


class DamagedCheckpointTest(parameterized.TestCase):

  def _run(self):
    path = os.path.join(self.create_tempdir().full_path, "run")
    run = run_dir_lib.RunDirectory(path, DESCRIPTION)
    for step in (1, 2, 3):
      run.save(step, _state(step))
    run.close()
    run.release()
    return path

  @parameterized.parameters("deleted", "truncated", "half_written")
  def test_resumes_from_the_newest_intact_checkpoint(self, how):
    path = self._run()
    _damage(path, how)
    run = run_dir_lib.RunDirectory(path, DESCRIPTION)
    self.assertEqual(run.latest_step(), 3)  # what the trainer sees before restoring
    with self.assertLogs(run_dir_lib.__name__, logging.WARNING) as logs:
      tree = run.restore(_template())
    self.assertEqual(int(tree["step"]), 2)
    np.testing.assert_array_equal(tree["w"], np.arange(64.0) * 2)
    self.assertEqual(run.restored_step, 2)
    (line,) = logs.output
    self.assertNotIn("\n", line)
    self.assertRegex(line, r"checkpoint 3 in .* is damaged .*; resuming from checkpoint 2 "
                           r"\(moved to .*damaged_checkpoints/3-\d+T\d+\)")
    moved = os.listdir(os.path.join(path, run_dir_lib.DAMAGED_DIR))
    self.assertLen(moved, 1)  # kept, not deleted
    self.assertEqual(run.latest_step(), 2)
    run.save(3, _state(30))  # the run goes on: step 3 is written afresh
    self.assertEqual(int(run.restore(_template())["step"]), 30)
    run.close()
    run.release()

  def test_no_intact_checkpoint_is_one_line_and_moves_nothing(self):
    path = self._run()
    for step in (1, 2, 3):
      os.remove(os.path.join(path, "checkpoints", str(step), "default", "manifest.ocdbt"))
    run = run_dir_lib.RunDirectory(path, DESCRIPTION)
    with self.assertRaises(CheckpointError) as e:
      run.restore(_template())
    self.assertNotIn("\n", str(e.exception))
    self.assertRegex(str(e.exception), r"^no checkpoint in .*checkpoints can be restored "
                                       r"\(steps 3, 2, 1; the newest, 3: ")
    self.assertEqual(sorted(os.listdir(os.path.join(path, "checkpoints"))), ["1", "2", "3"])
    run.close()
    run.release()

  def test_an_unfinished_orbax_temporary_folder_is_ignored(self):
    path = self._run()
    tmp = os.path.join(path, "checkpoints", "4.orbax-checkpoint-tmp-123")
    os.makedirs(os.path.join(tmp, "default"))
    run = run_dir_lib.RunDirectory(path, DESCRIPTION)
    self.assertEqual(int(run.restore(_template())["step"]), 3)
    run.close()
    run.release()


class CellTest(absltest.TestCase):

  def test_an_unreadable_cell_is_recomputed(self):
    path = os.path.join(self.create_tempdir().full_path, "study")
    cells = cells_lib.Cells(path, StudyConfig(preset="smoke"))
    cells.put({"x": 1}, "test", "a")
    with open(cells.path("test", "a"), "w") as f:
      f.write('{"x": ')  # cut short
    with self.assertLogs(cells_lib.__name__, logging.WARNING) as logs:
      self.assertIsNone(cells.get("test", "a"))
    self.assertRegex(logs.output[0], r"study cell .*a\.json is unreadable \(.*\); recomputing")
    cells.put({"x": 2}, "test", "a")
    self.assertEqual(cells.get("test", "a"), {"x": 2})
    cells.release()



def _enospc(*args, **kwargs):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FailOn:
  """A stand-in for `os.replace` that raises ENOSPC on call number `n` (1-based)."""

  def __init__(self, n):
    self.n, self.calls, self.real = n, 0, os.replace

  def __call__(self, *args, **kwargs):
    self.calls += 1
    if self.calls == self.n:
      _enospc()
    return self.real(*args, **kwargs)


class FullDiskTest(parameterized.TestCase):
  """ENOSPC while writing: one line, a non-zero exit (ValueError), the previous file intact."""

  def _check(self, error, path):
    self.assertIsInstance(error, report.WriteError)
    self.assertIsInstance(error, OSError)
    self.assertIsInstance(error, ValueError)  # the binaries: one line, exit 2
    self.assertEqual(error.errno, errno.ENOSPC)
    self.assertNotIn("\n", str(error))
    self.assertStartsWith(str(error), f"cannot write {path}: No space left on device; ")

  def test_json_write_keeps_the_previous_file(self):
    folder = self.create_tempdir().full_path
    path = os.path.join(folder, "summary.json")
    report.write_json(path, {"a": 1})
    with mock.patch("os.replace", FailOn(1)), self.assertRaises(report.WriteError) as e:
      report.write_json(path, {"a": 2})
    self._check(e.exception, path)
    with open(path) as f:
      self.assertEqual(json.load(f), {"a": 1})
    self.assertEqual(os.listdir(folder), ["summary.json"])  # no temporary file left

  @parameterized.parameters(1, 2)  # moving the old export aside; moving the new one in
  def test_export_keeps_the_previous_export(self, failing_call):
    path = os.path.join(self.create_tempdir().full_path, "optimizer")
    lopt = optimizers.L2ODM()
    old = lopt.init(jax.random.key(0))
    checkpoints.save_optimizer(path, lopt, old)
    new = jax.tree_util.tree_map(lambda x: x + 1.0, old)
    with mock.patch("os.replace", FailOn(failing_call)), \
         self.assertRaises(report.WriteError) as e:
      checkpoints.save_optimizer(path, lopt, new)
    self._check(e.exception, path)
    self.assertIn("any previous folder there is intact", str(e.exception))
    _, loaded = checkpoints.load_learned(path)
    chex.assert_trees_all_equal(loaded, old)
    self.assertEqual(os.listdir(os.path.dirname(path)), ["optimizer"])

  def test_study_cell_keeps_the_previous_cell(self):
    path = os.path.join(self.create_tempdir().full_path, "study")
    cells = cells_lib.Cells(path, StudyConfig(preset="smoke"))
    cells.put({"x": 1}, "test", "a")
    with mock.patch("os.replace", FailOn(1)), self.assertRaises(report.WriteError) as e:
      cells.put({"x": 2}, "test", "a")
    self._check(e.exception, cells.path("test", "a"))
    self.assertEqual(cells.get("test", "a"), {"x": 1})
    cells.release()

  def test_checkpoint_keeps_the_previous_one_and_a_rerun_resumes(self):
    path = os.path.join(self.create_tempdir().full_path, "run")
    run = run_dir_lib.RunDirectory(path, DESCRIPTION)
    run.save(1, _state(1))
    run.save(2, _state(2))
    with mock.patch.object(atomicity.AtomicRenameTemporaryPath, "finalize",
                           mock.AsyncMock(side_effect=_enospc)), \
         self.assertRaises(report.WriteError) as e:
      run.save(3, _state(3))
    self._check(e.exception, os.path.join(run.checkpoint_directory, "3"))
    self.assertIn("the checkpoint of meta-step 2 is intact", str(e.exception))
    run.close()
    run.release()
    rerun = run_dir_lib.RunDirectory(path, DESCRIPTION)  # space freed: resume from step 2
    self.assertEqual(rerun.latest_step(), 2)
    self.assertEqual(int(rerun.restore(_template())["step"]), 2)
    rerun.save(3, _state(3))
    self.assertEqual(rerun.latest_step(), 3)
    rerun.close()
    rerun.release()

  def test_metrics_line_fails_in_one_line_and_a_resume_drops_the_cut_line(self):
    path = os.path.join(self.create_tempdir().full_path, "run")
    run = run_dir_lib.RunDirectory(path, DESCRIPTION)
    run.open_metrics(keep_through=0)
    run.write_metrics({"iteration": 1, "loss": 1.0})
    metrics = os.path.join(path, "metrics.jsonl")
    real_write = run._writer._file.write  # pylint: disable=protected-access

    def cut(text):
      real_write(text[:5])  # a partial line, then the disk is full
      _enospc()

    with mock.patch.object(run._writer._file, "write", cut), \
         self.assertRaises(report.WriteError) as e:  # pylint: disable=protected-access
      run.write_metrics({"iteration": 2, "loss": 0.5})
    self._check(e.exception, metrics)
    run.close()
    run.release()
    rerun = run_dir_lib.RunDirectory(path, DESCRIPTION)
    rerun.open_metrics(keep_through=1)
    rerun.close()
    with open(metrics) as f:
      self.assertEqual([json.loads(line)["iteration"] for line in f], [1])
    rerun.release()


META_ARGS = ["--num_meta_iterations=14", "--unroll_length=5", "--num_inner_steps=10",
             "--meta_batch_size=2", "--validation_every=4", "--validation_horizon=10",
             "--validation_seeds=1", "--checkpoint_every=2", "--log_every=1", "--batch_size=16"]

# experiments.meta_train with a disk that fills up when checkpoint `sys.argv[1]` is written.
_FULL_DISK_AT = """
import errno, os, runpy, sys
from orbax.checkpoint._src.path import atomicity
full_at = int(sys.argv.pop(1))
real = atomicity.AtomicRenameTemporaryPath.finalize
async def finalize(self, *args, **kwargs):
  if str(self._final_path).rstrip("/").endswith(f"/{full_at}"):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  return await real(self, *args, **kwargs)
atomicity.AtomicRenameTemporaryPath.finalize = finalize
sys.argv[0] = "meta_train.py"
runpy.run_module("experiments.meta_train", run_name="__main__")
"""


def _meta_train(run_dir, full_at=None, wait=True):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  head = ([sys.executable, "-c", _FULL_DISK_AT, str(full_at)] if full_at is not None
          else [sys.executable, "-m", "experiments.meta_train"])
  proc = subprocess.Popen([*head, *META_ARGS, f"--run_dir={run_dir}"], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  if not wait:
    return proc
  _, err = proc.communicate(timeout=600)
  return proc.returncode, err.splitlines()


def _exported(run_dir):
  with np.load(os.path.join(run_dir, "optimizer", "meta_params.npz")) as npz:
    return {k: npz[k] for k in npz.files}


def _iterations(run_dir):
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return [json.loads(line)["iteration"] for line in f]


@pytest.mark.slow
class BinaryFaultsTest(absltest.TestCase):
  """experiments.meta_train end to end (about 20 s a run on 2 CPU cores)."""

  def test_second_writer_is_refused_at_once_and_the_first_is_unharmed(self):
    path = os.path.join(self.create_tempdir().full_path, "run")
    first = _meta_train(path, wait=False)
    for line in first.stderr:
      if "meta-step 1/" in line:
        break
    first.send_signal(signal.SIGSTOP)  # held mid-run, however fast the rest would go
    tic = time.monotonic()
    code, err = _meta_train(path)
    took = time.monotonic() - tic
    first.send_signal(signal.SIGCONT)
    self.assertEqual(code, 2, err)
    self.assertEqual(err[-1], f"meta_train.py: error: run directory {path} is in use by PID "
                              f"{first.pid} on host {os.uname().nodename}; wait for it or use "
                              "another run directory")
    self.assertLess(took, 30)  # refused before anything compiles
    first.stderr.read()
    self.assertEqual(first.wait(timeout=600), 0)
    self.assertEqual(_iterations(path), list(range(1, 15)))
    self.assertNotEmpty(_exported(path))
    code, err = _meta_train(path)  # finished and released: a rerun takes the folder
    self.assertEqual(code, 0, err)

  def test_full_disk_then_damaged_checkpoint_then_resume_equals_uninterrupted(self):
    reference = os.path.join(self.create_tempdir().full_path, "reference")
    self.assertEqual(_meta_train(reference)[0], 0)
    path = os.path.join(self.create_tempdir().full_path, "run")
    code, err = _meta_train(path, full_at=8)
    self.assertNotEqual(code, 0)
    self.assertRegex(err[-1], rf"^meta_train.py: error: cannot write {path}/checkpoints/8: No "
                              r"space left on device; the checkpoint of meta-step 6 is intact")
    self.assertNotIn("Traceback", "\n".join(err))
    # Then the newest checkpoint is damaged too: the rerun resumes from meta-step 4.
    os.remove(os.path.join(path, "checkpoints", "6", "default", "manifest.ocdbt"))
    code, err = _meta_train(path)
    self.assertEqual(code, 0, err)
    warning = [line for line in err if "is damaged" in line]
    self.assertLen(warning, 1, err)
    self.assertRegex(warning[0], r"checkpoint 6 in .* is damaged .*; resuming from checkpoint 4 "
                                 r"\(moved to .*damaged_checkpoints/6-")
    expected, got = _exported(reference), _exported(path)
    self.assertEqual(expected.keys(), got.keys())
    for k in expected:
      np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    self.assertEqual(_iterations(path), list(range(1, 15)))


sys.path.insert(0, os.path.join(ROOT, "scripts"))
import chaos  # pylint: disable=g-import-not-at-top,wrong-import-position


class ChaosCompareTest(absltest.TestCase):
  """scripts/chaos.py's comparison: timing left out, anything else a difference."""

  def test_timing_and_folder_are_left_out_and_other_changes_are_found(self):
    a = {"cells": [{"wall_time_s": 1.0, "test_accuracy": 0.5, "export": "/a/run/x"}],
         "meta": {"history": [{"meta_steps_per_second": 3.0, "loss": float("nan")}]}}
    b = {"cells": [{"wall_time_s": 2.0, "test_accuracy": 0.5, "export": "/b/run/x"}],
         "meta": {"history": [{"meta_steps_per_second": 4.0, "loss": float("nan")}]}}
    clean = lambda v, folder: chaos.without_timing(v, folder)
    self.assertIsNone(chaos.first_difference(clean(a, "/a/run"), clean(b, "/b/run")))
    b["cells"][0]["test_accuracy"] = 0.5000001
    self.assertEqual(chaos.first_difference(clean(a, "/a/run"), clean(b, "/b/run")),
                     "cells[0].test_accuracy: 0.5 != 0.5000001")
    self.assertEqual(chaos.first_difference([1], [1, 2]), ": 1 items != 2 items")

  def test_progress_keys_name_the_cell(self):
    # The study's own lines (flatl2o/study/stages.py, driver.py): a redone cell has the same key.
    lines = {
        "I1207 23:01 stage 2 (meta-training cell 3/15): meta-training l2o_dm-none-s2 (up to "
        "600 meta-steps, early stop)": "meta-training l2o_dm-none-s2",
        "stage 4 (baselines): tuned adam: learning rate 0.03; ETA 3m": "tuned adam",
        "stage 5 (meta-tests cell 1/3): meta-tested l2o_dm-none-s0 on mlp_relu; 4/20, ETA 5m":
            "meta-tested l2o_dm-none-s0 on mlp_relu",
        "stage 2: meta-step 50/600 ETA 4m": None}
    for line, key in lines.items():
      self.assertEqual(chaos.progress_key(line), key, line)


@pytest.mark.slow
class ChaosRunTest(absltest.TestCase):
  """The smoke preset (one model, two regularizers, one optimizee) killed three times."""

  def test_three_kills_give_the_uninterrupted_results(self):
    # About 4 minutes on 2 shared CPU cores: 80 s reference, 140 s with the kills.
    work = self.create_tempdir().full_path
    report_path = os.path.join(work, "outcome.json")
    code = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "chaos.py"), f"--work_dir={work}",
         "--kills=3", "--seed=0", f"--report={report_path}",
         "--study_flags=--models=l2o_dm --regularizers=none,hessian --optimizees=mlp_sigmoid"],
        cwd=ROOT, timeout=1800, check=False).returncode
    with open(report_path) as f:
      outcome = json.load(f)
    self.assertEqual(code, 0, outcome)
    self.assertTrue(outcome["identical"], outcome)
    self.assertLen(outcome["kills"], 3)


if __name__ == "__main__":
  absltest.main()
