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

import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

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


if __name__ == "__main__":
  absltest.main()
