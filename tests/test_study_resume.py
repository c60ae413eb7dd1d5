"""A study stopped and continued computes what an uninterrupted one does, improvement
records and their exports included; a rerun of a finished study changes nothing."""

import json
import os
import tempfile
from unittest import mock

import numpy as np
import pytest
from absl.testing import absltest

from flatl2o import study
from flatl2o.study import config as study_config

# Small enough for the tests, large enough that plain L2O-DM validates without collapsing
# (so it records improvements) and that the same-budget control has something to select.
RESUME_PRESET = study.Preset(
    meta_seeds=(0, 1), num_meta_iterations=24, unroll_length=10, num_inner_steps=40,
    meta_batch_size=2, validation_every=4, validation_seeds=1, adam_grid=(0.03,),
    sgd_grid=(0.3,), tuning_seeds=1, test_seeds=1, test_horizon=20, eval_every=10,
    flatness_batch=64, trace_probes=1, lanczos_iters=2, entropy_gap_samples=2,
    coefficients="shipped", models=("l2o_dm",), optimizees=(study.SEEN,), baselines=())

# Timing and its accounting differ between runs by nature; everything else must not.
TIMING = {"wall_time_s", "date", "machine", "wall_time_parts", "meta_steps_per_second"}


def _without_timing(value):
  if isinstance(value, dict):
    return {k: _without_timing(v) for k, v in value.items() if k not in TIMING}
  if isinstance(value, list):
    return [_without_timing(v) for v in value]
  return value


def _exports(run_dir):
  """Every export's meta-parameters: {folder name: {array name: array}}."""
  root = os.path.join(run_dir, "optimizers")
  out = {}
  for name in sorted(os.listdir(root)):
    with np.load(os.path.join(root, name, "meta_params.npz")) as f:
      out[name] = {k: f[k] for k in f.files}
  return out


@pytest.mark.slow  # three small studies (~1 min)
class ResumeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.patch = mock.patch.dict(study_config.PRESETS, {"resume_test": RESUME_PRESET})
    cls.patch.start()
    cls.config = study.StudyConfig(preset="resume_test", regularizers=("none", "hessian"))
    cls.root = tempfile.mkdtemp(prefix="flatl2o-resume-")
    cls.whole_dir = os.path.join(cls.root, "whole")
    cls.whole = cls._run(cls.whole_dir)

  @classmethod
  def tearDownClass(cls):
    cls.patch.stop()
    super().tearDownClass()

  @classmethod
  def _run(cls, run_dir, should_stop=lambda: False):
    results = study.run(cls.config, run_dir, should_stop=should_stop, log=lambda line: None)
    study.write_outputs(results, run_dir)
    with open(os.path.join(run_dir, "results.json")) as f:
      return json.load(f)

  def test_the_uninterrupted_study_reaches_the_same_budget_control(self):
    plain = self.whole["meta_training"]["l2o_dm-none-s0"]
    self.assertNotEmpty(plain["improvements"])  # else this test would test nothing
    self.assertTrue(self.whole["same_budget"])

  def test_interrupted_right_after_the_first_improvement(self):
    run_dir = os.path.join(self.root, "stopped")
    exports = os.path.join(run_dir, "optimizers")
    # Stops the meta-step after plain seed 0 exports its first improvement.
    first = lambda: os.path.isdir(exports) and any(
        n.startswith("l2o_dm-none-s0@") for n in os.listdir(exports))
    with self.assertRaises(study.StudyInterrupted) as stopped:
      self._run(run_dir, should_stop=first)
    self.assertIn("meta-training l2o_dm-none-s0", str(stopped.exception))
    resumed = self._run(run_dir)
    improvements = lambda r: {n: c["improvements"] for n, c in r["meta_training"].items()}
    self.assertEqual(improvements(resumed), improvements(self.whole))  # the readable part
    self.assertEqual(_without_timing(resumed), _without_timing(self.whole))
    self.assertEqual(resumed["wall_time_parts"], 2)
    mine, theirs = _exports(run_dir), _exports(self.whole_dir)
    self.assertEqual(list(mine), list(theirs))
    for name in mine:
      for key in mine[name]:
        np.testing.assert_array_equal(mine[name][key], theirs[name][key], err_msg=name)

  def test_a_rerun_of_a_finished_study_changes_nothing(self):
    path = os.path.join(self.whole_dir, "results.json")
    with open(path, "rb") as f:
      before = f.read()
    self._run(self.whole_dir)
    with open(path, "rb") as f:
      self.assertEqual(f.read(), before)


if __name__ == "__main__":
  absltest.main()
