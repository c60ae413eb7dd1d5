"""The study's same-budget control end to end through the driver, with meta-training and
meta-tests stubbed by hand-made histories: which plain optimizer is each regularized one
compared with, and does the primary figure follow from it."""

import dataclasses
import os
import tempfile
from unittest import mock

import numpy as np
from absl.testing import absltest

from flatl2o import study
from flatl2o.meta import terms
from flatl2o.study import config as study_config
from flatl2o.study import driver

PRESET = study.Preset(
    meta_seeds=(0, 1, 2), num_meta_iterations=200, unroll_length=5, num_inner_steps=10,
    meta_batch_size=1, validation_every=50, validation_seeds=1, adam_grid=(0.01,),
    sgd_grid=(0.1,), tuning_seeds=1, test_seeds=2, test_horizon=20, eval_every=10,
    flatness_batch=8, trace_probes=1, lanczos_iters=2, coefficients="shipped",
    models=("l2o_dm",), optimizees=(study.SEEN,), baselines=())

# Plain's validations per meta seed (meta-step -> score); its selection is the best overall.
PLAIN = {0: {50: 0.90, 100: 0.95, 150: 0.97, 200: 0.96},  # best 150; at budget 100: 100
         1: {50: 0.90, 100: 0.95, 150: 0.93, 200: 0.94},  # best 100 = its pick at budget 150
         2: {50: 0.92, 100: 0.91, 150: 0.96, 200: 0.95}}  # best 150; at budget 100: 50
# The regularized run's selected meta-step (its budget) per meta seed.
BUDGET = {0: 100, 1: 150, 2: 100}
# What the control of each seed must be.
CONTROL = {0: "l2o_dm-none-s0@100", 1: "l2o_dm-none-s1", 2: "l2o_dm-none-s2@50"}


def _cell(name, kind, coefficient, seed, best, validations, improvements):
  return {"name": name, "model": "l2o_dm", "regularizer": kind, "coefficient": coefficient,
          "meta_seed": seed, "num_meta_iterations": 200, "meta_steps_done": 200,
          "best_validation_accuracy": validations[best], "best_meta_step": best,
          "collapsed": False, "validations": [
              {"iteration": k, "score": v, "collapsed": False}
              for k, v in sorted(validations.items())],
          "export": os.path.join("optimizers", name), "improvements": improvements}


def fake_meta_train_cell(cells, config, task, model, kind, coefficient, seed, should_stop,
                         num_meta_iterations=None, log=print, **kwargs):
  del cells, config, task, model, should_stop, log, kwargs
  assert num_meta_iterations is None, "the control was retrained instead of taken as an export"
  name = study.regularizer_label(kind, coefficient)
  if kind == "none":
    scores = PLAIN[seed]
    running, improvements = -1.0, []
    for step, score in sorted(scores.items()):
      if score > running:
        running, improvements = score, improvements + [step]
    return _cell(f"l2o_dm-none-s{seed}", kind, None, seed, improvements[-1], scores,
                 improvements)
  budget = BUDGET[seed]
  return _cell(f"l2o_dm-{name}-s{seed}", kind, coefficient, seed, budget, {budget: 0.99}, None)


def accuracy_of(name: str, test_seed: int) -> float:
  """A hand-made meta-test: each contender's accuracy, distinct per name and test seed."""
  return 0.5 + (sum(map(ord, name)) % 97) / 1000 + test_seed % 2 / 100


def fake_run_test(task, tx, s, seed, horizon, measure, snapshots=None):
  del task, s, measure, snapshots
  acc = accuracy_of(tx, seed)
  return {"test_seed": seed, "eval_steps": [0, horizon], "train_loss_curve": [float("nan"), 0.5],
          "test_accuracy_curve": [0.1, acc], "test_loss_curve": [2.3, 0.4],
          "initial_train_loss": 2.3, "train_loss": 0.5, "test_accuracy": acc, "test_loss": 0.4,
          "collapsed": False, "hessian_trace": 1.0, "top_eigenvalue": 1.0, "entropy_gap": 1.0,
          "wall_time_s": 0.0}


class SameBudgetStageTest(absltest.TestCase):

  KIND = "hessian"

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    patches = [mock.patch.dict(study_config.PRESETS, {"stub": PRESET}),
               mock.patch.object(driver, "meta_train_cell", fake_meta_train_cell),
               mock.patch.object(driver, "run_test", fake_run_test),
               mock.patch.object(driver, "loader", lambda cells, cell: lambda: cell["name"]),
               mock.patch.object(driver, "matched_run",
                                 lambda task, tx, s, r, level, measure, kept: {
                                     "test_seed": r["test_seed"], "step": None})]
    for p in patches:
      p.start()
      cls.addClassCleanup(p.stop)
    cls.config = study.StudyConfig(preset="stub", regularizers=("none", cls.KIND))
    cls.results = study.run(cls.config, tempfile.mkdtemp(prefix="flatl2o-stub-"),
                            log=lambda line: None)
    cls.coefficient = cls.config.shipped_coefficients()[cls.KIND]

  def test_each_seed_is_paired_with_plain_selected_within_its_budget(self):
    label = study.regularizer_label(self.KIND, self.coefficient)
    self.assertEqual(self.results["same_budget"],
                     {f"l2o_dm-{label}-s{m}": CONTROL[m] for m in range(3)})
    self.assertEqual(self.results["unpaired"], {})

  def test_the_primary_figure_follows_from_those_controls(self):
    (primary,) = [e for e in self.results["primary"] if e["family"] == "primary"]
    label = study.regularizer_label(self.KIND, self.coefficient)
    tests = [1000, 1001]
    d = [np.mean([accuracy_of(f"l2o_dm-{label}-s{m}", t) - accuracy_of(CONTROL[m], t)
                  for t in tests]) for m in range(3)]
    self.assertAlmostEqual(primary["difference"], np.mean(d), places=12)
    self.assertEqual(primary["meta_seeds"], 3)
    self.assertEqual(primary["control_meta_steps"], [100, 100, 50])
    self.assertEqual(primary["unpaired"], {})



@terms.register("stage_grad_norm")
@dataclasses.dataclass(frozen=True)
class StageGradNorm:
  """A user's term, named by a study (its coefficient: this default, 0.25)."""
  coefficient: float = 0.25

  def __call__(self, loss_fn, params, key):
    raise AssertionError("meta-training is stubbed here")


class UserTermStageTest(SameBudgetStageTest):
  """The same study with a term of the user's own in place of the Hessian term."""

  KIND = "stage_grad_norm"

  def test_the_study_names_the_users_term(self):
    self.assertEqual(self.coefficient, 0.25)
    self.assertEqual(self.results["coefficients"]["stage_grad_norm"], 0.25)
    (primary,) = [e for e in self.results["primary"] if e["family"] == "primary"]
    self.assertEqual((primary["regularizer"], primary["coefficient"]), (self.KIND, 0.25))
    command = study.meta_train_command(self.config, "l2o_dm", self.KIND, 0.25, 0)
    self.assertIn(f"--import={__name__}", command)
    self.assertIn("--regularizer=stage_grad_norm", command)
    self.assertIn("--config.regularizer.coefficient=0.25", command)
    self.assertNotIn("--alpha", command)


if __name__ == "__main__":
  absltest.main()
