"""A Ctrl-C prints exactly one line: meta_train and reproduce, stopped by SIGINT mid-run."""

import os
import re
import signal
import subprocess
import sys

import pytest
from absl.testing import absltest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Progress and log lines (absl's "I1206 12:00:00.000 ..."): not what the signal printed.
_INFO = re.compile(r"^I\d{4} ")


def _interrupt(module, args, when):
  """Runs `module`, sends SIGINT once a stderr line contains `when`; (code, later lines)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  for line in proc.stderr:
    if when in line:
      proc.send_signal(signal.SIGINT)
      break
  rest = proc.stderr.read().splitlines()
  proc.wait(timeout=600)
  return proc.returncode, [l for l in rest if not _INFO.match(l)]


class CtrlCTest(absltest.TestCase):

  @pytest.mark.slow  # meta_train until its 2nd meta-step
  def test_meta_train(self):
    run_dir = os.path.join(self.create_tempdir().full_path, "run")
    code, lines = _interrupt(
        "experiments.meta_train",
        ["--optimizer=l2o_dm", "--num_meta_iterations=50", "--unroll_length=5",
         "--num_inner_steps=20", "--meta_batch_size=1", "--log_every=1",
         "--validation_every=50", f"--run_dir={run_dir}"], "meta-step 2/")
    self.assertEqual(code, 130, lines)
    self.assertLen(lines, 1, lines)
    self.assertRegex(lines[0], r"^meta_train.py: interrupted at meta-step \d+; checkpoint saved")

  @pytest.mark.slow  # reproduce until its first meta-training cell starts
  def test_reproduce(self):
    run_dir = os.path.join(self.create_tempdir().full_path, "run")
    code, lines = _interrupt(
        "experiments.reproduce",
        ["--preset=smoke", "--models=l2o_dm", "--regularizers=none",
         "--optimizees=mlp_sigmoid", f"--run_dir={run_dir}"], "meta-training ")
    self.assertEqual(code, 130, lines)
    self.assertLen(lines, 1, lines)
    self.assertRegex(lines[0], r"^reproduce.py: interrupted while .*; finished cells are kept")


class ContinueTest(absltest.TestCase):

  @pytest.mark.slow  # the smoke preset, stopped in its second meta-training cell, then rerun
  def test_a_rerun_says_what_it_continues(self):
    run_dir = os.path.join(self.create_tempdir().full_path, "run")
    args = ["--preset=smoke", "--models=l2o_dm", "--regularizers=none",
            "--optimizees=mlp_sigmoid", f"--run_dir={run_dir}"]
    code, _ = _interrupt("experiments.reproduce", args, "cell 2/2 l2o_dm-none-s1: meta-step 2/")
    self.assertEqual(code, 130)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "experiments.reproduce", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
    self.assertIn("continuing: 1 of 2 meta-training cells done", proc.stderr)
    self.assertRegex(proc.stderr, r"resuming l2o_dm-none-s1 at meta-step [1-4]\b")
    self.assertNotRegex(proc.stderr, r"meta-training l2o_dm-none-s0 ")  # the finished cell


if __name__ == "__main__":
  absltest.main()
