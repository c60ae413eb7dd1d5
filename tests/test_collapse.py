"""Collapse means collapse: a run always exports, and says when what it exports never learned.

The selection (`flatl2o.meta.selection.Selector`), the export's status
(`flatl2o.checkpoints.status`), meta_train's result and export with scripted
validations, and the meta_train binary's exit codes (slow).
"""

import json
import os
import subprocess
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest

from flatl2o import checkpoints, meta, optimizers, tasks
from flatl2o.meta import selection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _validation(accuracy, collapsed):
  return {"accuracy": accuracy, "loss": 1.0, "initial_train_loss": 2.3,
          "final_train_loss": 2.2 if collapsed else 0.5}


class SelectorTest(absltest.TestCase):

  def _observe(self, selector, outcomes):
    best = selector.initial("init", None)
    for i, (accuracy, collapsed) in enumerate(outcomes, start=1):
      best, _ = selector.observe(best, _validation(accuracy, collapsed), f"p{i}", None, 10 * i)
    return best

  def test_all_collapsed_keeps_the_best_scoring_one(self):
    selector = selection.Selector()
    best = self._observe(selector, [(0.2, True), (0.5, True), (0.3, True)])
    self.assertFalse(selector.found(best))
    self.assertEqual(selector.selected(best, "last"), "p2")
    self.assertEqual(selector.selected_at(best), (20, 0.5))
    self.assertEqual(selector.best_score(best), float("-inf"))
    self.assertEqual(selector.best_iteration(best), -1)

  def test_a_good_validation_beats_any_collapsed_one(self):
    selector = selection.Selector()
    best = self._observe(selector, [(0.9, True), (0.25, False), (0.95, True), (0.125, False)])
    self.assertTrue(selector.found(best))
    self.assertEqual(selector.selected(best, "last"), "p2")
    self.assertEqual(selector.selected_at(best), (20, 0.25))
    self.assertEqual(selector.best_iteration(best), 20)

  def test_no_validation_returns_the_given_meta_params(self):
    selector = selection.Selector()
    best = selector.initial("init", None)
    self.assertEqual(selector.selected(best, "last"), "last")
    self.assertEqual(selector.selected_at(best), (-1, float("-inf")))

  def test_checkpoint_layout_unchanged(self):
    # What is checkpointed keeps its keys and dtypes (older checkpoints still restore).
    selector = selection.Selector()
    best = self._observe(selector, [(0.2, True)])
    self.assertEqual(sorted(best), ["iteration", "meta_params", "score"])
    self.assertEqual(np.asarray(best["iteration"]).dtype, np.int32)
    self.assertEqual(np.asarray(best["score"]).dtype, np.float32)


class ExportStatusTest(absltest.TestCase):

  def _export(self, metadata=None):
    lopt = optimizers.L2ODM(hidden_size=4)
    path = os.path.join(self.create_tempdir().full_path, "optimizer")
    checkpoints.save_optimizer(path, lopt, lopt.init(jax.random.key(0)), metadata=metadata)
    return path

  def test_an_export_without_metadata_is_trained_and_unchanged(self):
    path = self._export()
    with open(os.path.join(path, "optimizer.json")) as f:
      self.assertNotIn("metadata", json.load(f))  # older exports' bytes and checksums
    self.assertEqual(checkpoints.status(path), "trained")
    self.assertIsNone(checkpoints.status_warning(path))

  def test_marked_exports_load_and_warn(self):
    for status in ("collapsed", "undertrained"):
      path = self._export({"status": status, "meta_step": 5})
      checkpoints.load_learned(path)  # still loads
      self.assertEqual(checkpoints.status(path), status)
      self.assertIn(f"is marked {status}", checkpoints.status_warning(path))

  def test_unknown_status_is_refused(self):
    with self.assertRaisesRegex(ValueError, "unknown export status 'odd'; accepted: trained"):
      self._export({"status": "odd"})


class EvaluateWarnsTest(absltest.TestCase):

  def test_evaluate_warns_once_about_a_marked_export(self):
    """Catches: a collapsed export evaluated without a word."""
    from flatl2o.compare import multiseed  # pylint: disable=g-import-not-at-top
    lopt = optimizers.L2ODM(hidden_size=4)
    root = self.create_tempdir().full_path
    logs = {}
    for status in ("collapsed", None):
      export = os.path.join(root, f"export-{status}")
      checkpoints.save_optimizer(export, lopt, lopt.init(jax.random.key(0)),
                                 metadata=status and {"status": status})
      config = multiseed.EvaluateConfig(
          task="quadratic", dataset=None, data_dir=None, optimizer=export, learning_rate=None,
          num_steps=2, batch_size=8, eval_every=2, seeds=(0,),
          out_dir=os.path.join(root, f"out-{status}"))
      logs[status] = []
      multiseed.evaluate(config, log=logs[status].append)
    self.assertLen([l for l in logs["collapsed"] if "is marked collapsed" in l], 1)
    self.assertEmpty([l for l in logs[None] if "warning" in l])


def _scripted(outcomes, seen):
  """A stand-in for `trainer.validate`: (accuracy, collapsed) in call order."""
  def validate(lopt, task, meta_params, keys, horizon):
    del lopt, task, keys, horizon
    seen.append(jax.tree.map(np.array, meta_params))
    return {k: jnp.float32(v) for k, v in _validation(*outcomes[len(seen) - 1]).items()}
  return validate


class MetaTrainExportTest(absltest.TestCase):

  def _run(self, outcomes, regularizer=None):
    seen = []
    lopt = optimizers.L2ODM(hidden_size=4)
    task = tasks.get("quadratic", batch_size=8)  # validation is scripted: any task will do
    config = meta.MetaTrainConfig(
        unroll_length=2, num_inner_steps=4, meta_batch_size=2,
        num_meta_iterations=len(outcomes), validation_every=1, validation_horizon=4,
        validation_seeds=2, log_every=1, meta_learning_rate=1e-2,
        regularizer=regularizer or meta.RegularizerConfig())
    run_dir = self.create_tempdir().full_path
    with mock.patch.object(meta.trainer, "validate", _scripted(outcomes, seen)):
      result = meta.meta_train(lopt, task, config, run_dir=run_dir)
    return result, seen, os.path.join(run_dir, "optimizer")

  def test_plain_run_that_never_learned_exports_its_best_as_undertrained(self):
    """Catches: nothing exported; the last (not the best) exported; status missing."""
    result, seen, export = self._run([(0.2, True), (0.6, True), (0.4, True)])
    self.assertTrue(result.collapsed)
    self.assertEqual(result.status, "undertrained")
    self.assertEqual((result.best_score, result.best_iteration), (float("-inf"), -1))
    self.assertEqual(result.selected_iteration, 2)
    _, exported = checkpoints.load_learned(export)
    for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(seen[1])):
      np.testing.assert_array_equal(a, b)
    self.assertEqual(checkpoints.metadata(export),
                     {"status": "undertrained", "meta_step": 2,
                      "validation_score": float(np.float32(0.6))})

  def test_regularized_run_that_never_learned_is_collapsed(self):
    result, _, export = self._run([(0.2, True), (0.3, True)],
                                  meta.RegularizerConfig(kind="hessian", alpha=30.0))
    self.assertEqual(result.status, "collapsed")
    self.assertEqual(checkpoints.status(export), "collapsed")

  def test_trained_run_exports_without_metadata(self):
    result, _, export = self._run([(0.9, True), (0.4, False), (0.3, True)])
    self.assertFalse(result.collapsed)
    self.assertEqual(result.status, "trained")
    self.assertEqual(result.best_iteration, 2)
    self.assertEqual(checkpoints.metadata(export), {})


class StudyCellTest(absltest.TestCase):

  def test_a_collapsed_cell_is_exported_marked_and_counted_collapsed(self):
    """Catches: a study export of a collapsed cell that evaluate would not warn about."""
    from flatl2o import study  # pylint: disable=g-import-not-at-top
    from flatl2o.study import stages  # pylint: disable=g-import-not-at-top
    lopt = optimizers.L2ODM()
    root = self.create_tempdir().full_path
    config = study.StudyConfig(preset="smoke")
    cells = study.Cells(root, config)

    def fake_meta_train(lopt_, task, mconfig, run_dir, **kwargs):
      del lopt_, task, mconfig, kwargs
      os.makedirs(run_dir)
      with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"iteration": 2, "validation_score": 0.1, "collapsed": True}) + "\n")
      return meta.MetaTrainResult(
          meta_params=lopt.init(jax.random.key(0)), last_meta_params=None,
          best_score=float("-inf"), best_iteration=-1, history=[], num_skipped=0,
          collapsed=True, status="collapsed", selected_iteration=2)

    with mock.patch.object(meta, "meta_train", fake_meta_train):
      cell = stages.meta_train_cell(cells, config, None, "l2o_dm", "hessian", 10.0, 0,
                                    lambda: False, log=lambda line: None)
    self.assertTrue(cell["collapsed"])
    self.assertIsNone(stages.choose_coefficient([cell]))
    export = os.path.join(root, cell["export"])
    self.assertEqual(checkpoints.metadata(export), {"status": "collapsed", "meta_step": 2})


def run_binary(module, *args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


_SHORT = ["--optimizer=mlp_lopt", "--unroll_length=5", "--num_inner_steps=20",
          "--meta_batch_size=1"]


class MetaTrainBinaryExitTest(absltest.TestCase):

  @pytest.mark.slow  # meta_train end to end
  def test_short_plain_run_exports_undertrained_and_exits_0(self):
    run_dir = os.path.join(self.create_tempdir().full_path, "run")
    proc = run_binary("experiments.meta_train", *_SHORT, "--num_meta_iterations=5",
                      f"--run_dir={run_dir}")
    self.assertEqual(proc.returncode, 0, proc.stderr)
    self.assertIn("(undertrained): exported anyway", proc.stderr)
    self.assertNotIn("--alpha", proc.stderr)
    self.assertEqual(checkpoints.status(os.path.join(run_dir, "optimizer")), "undertrained")

  @pytest.mark.slow  # meta_train end to end
  def test_collapsed_regularized_run_exports_and_exits_3(self):
    run_dir = os.path.join(self.create_tempdir().full_path, "run")
    proc = run_binary("experiments.meta_train", *_SHORT, "--num_meta_iterations=2",
                      "--regularizer=hessian", "--alpha=30", f"--run_dir={run_dir}")
    self.assertEqual(proc.returncode, 3, proc.stderr)
    self.assertIn("exported anyway", proc.stderr)
    self.assertIn("lower --alpha", proc.stderr)
    self.assertEqual(checkpoints.status(os.path.join(run_dir, "optimizer")), "collapsed")


if __name__ == "__main__":
  absltest.main()
