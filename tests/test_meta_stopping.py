"""Meta-training until validation stops improving (patience), the improvement hook, and the
flatness term's share of the meta-gradient (`meta.gradient_ratio`) against the estimator."""

import dataclasses

import jax
import numpy as np
from absl.testing import absltest, parameterized

from flatl2o import meta, optimizers, tasks

SMALL = dict(unroll_length=5, num_inner_steps=10, meta_batch_size=2, validation_every=2,
             validation_horizon=10, validation_seeds=1, log_every=2, checkpoint_every=2,
             meta_learning_rate=3e-2, num_devices=1)


def _expected_stop(validations, patience, minimum, cap):
  """The rule replayed on the validation records: the first validated meta-step at which
  at least `minimum` are done and the best is `patience` or more meta-steps old."""
  best_step, best = 0, -np.inf
  for v in validations:
    if not v["collapsed"] and v["validation_score"] > best:
      best_step, best = v["iteration"], v["validation_score"]
    if v["iteration"] >= minimum and v["iteration"] - best_step >= patience:
      return v["iteration"]
  return cap


class PatienceTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.lopt = optimizers.L2ODM(hidden_size=4)
    cls.task = tasks.get("quadratic", batch_size=8)

  @parameterized.parameters((2, 0), (4, 6), (2, 8))
  def test_stops_where_the_rule_says(self, patience, minimum):
    cap = 30
    config = meta.MetaTrainConfig(**SMALL, num_meta_iterations=cap, patience=patience,
                                  min_meta_iterations=minimum)
    result = meta.meta_train(self.lopt, self.task, config)
    validations = [r for r in result.history if "validation_score" in r]
    want = _expected_stop(validations, patience, minimum, cap)
    self.assertEqual(result.meta_steps_done, want)
    self.assertEqual(validations[-1]["iteration"], want)
    self.assertGreaterEqual(want, minimum)
    # without patience, the same run goes on to the cap with the same first meta-steps
    full = meta.meta_train(self.lopt, self.task, dataclasses.replace(config, patience=None))
    self.assertEqual(full.meta_steps_done, cap)
    self.assertEqual([r["validation_score"] for r in full.history
                      if "validation_score" in r][:len(validations)],
                     [r["validation_score"] for r in validations])

  def test_a_stopped_run_resumed_stays_stopped(self):
    run_dir = self.create_tempdir().full_path
    config = meta.MetaTrainConfig(**SMALL, num_meta_iterations=40, patience=2)
    first = meta.meta_train(self.lopt, self.task, config, run_dir=run_dir)
    self.assertLess(first.meta_steps_done, 40)
    again = meta.meta_train(self.lopt, self.task, config, run_dir=run_dir)
    self.assertEqual(again.resumed_from, first.meta_steps_done)
    self.assertEqual(again.meta_steps_done, first.meta_steps_done)
    self.assertEqual(again.history, [])  # no meta-step taken
    np.testing.assert_array_equal(jax.tree.leaves(again.meta_params)[0],
                                  jax.tree.leaves(first.meta_params)[0])

  def test_bad_values(self):
    with self.assertRaisesRegex(ValueError, "patience must be a positive integer"):
      meta.MetaTrainConfig(patience=0)
    with self.assertRaisesRegex(ValueError, "min_meta_iterations must be a non-negative"):
      meta.MetaTrainConfig(min_meta_iterations=-1)

  def test_improvements_are_reported_with_the_selected_meta_parameters(self):
    seen = []
    config = meta.MetaTrainConfig(**SMALL, num_meta_iterations=12)
    result = meta.meta_train(self.lopt, self.task, config,
                             on_improvement=lambda step, p: seen.append((step, p)))
    best, steps = -np.inf, []
    for r in result.history:
      if "validation_score" in r and not r["collapsed"] and r["validation_score"] > best:
        best = r["validation_score"]
        steps.append(r["iteration"])
    self.assertEqual([s for s, _ in seen], steps)
    self.assertEqual(seen[-1][0], result.best_iteration)
    for a, b in zip(jax.tree.leaves(seen[-1][1]), jax.tree.leaves(result.meta_params)):
      np.testing.assert_array_equal(a, b)


class GradientRatioTest(parameterized.TestCase):
  """The two norms against the truncated estimator's meta-gradients with and without the term."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.lopt = optimizers.L2ODM(hidden_size=4)
    cls.task = tasks.get("mlp_sigmoid", "digits", batch_size=16)
    cls.meta_params = cls.lopt.init(jax.random.key(0))

  def _config(self, kind, coefficient):
    reg = meta.RegularizerConfig() if kind == "none" else meta.RegularizerConfig(
        kind=kind, **({"alpha": coefficient} if kind == "hessian" else {"beta": coefficient}))
    return meta.MetaTrainConfig(unroll_length=5, num_inner_steps=10, meta_batch_size=2,
                                num_devices=1, regularizer=reg)

  def _estimated(self, config, key):
    """The truncated estimator's meta-gradient of one truncation, as meta_step sees it."""
    unroll = config.unroll_config()
    init_key, run_key = jax.random.split(key)
    estimator = meta.estimators.get("truncated", self.lopt, self.task, unroll)
    state = estimator.init(self.meta_params, init_key)
    _, grads, _, _ = estimator.estimate(self.meta_params, state, jax.random.fold_in(run_key, 0))
    return grads

  @parameterized.parameters(("hessian", 100.0), ("entropy", 1.0))
  def test_norms_are_those_of_the_two_parts_of_the_meta_gradient(self, kind, coefficient):
    key = jax.random.key(3)
    config = self._config(kind, coefficient)
    got = meta.gradient_ratio(self.lopt, self.task, config, self.meta_params, key,
                              num_truncations=1)
    total = self._estimated(config, key)
    loss_only = self._estimated(self._config("none", None), key)
    norm = lambda tree: float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(tree))))
    self.assertAlmostEqual(got["loss_grad_norm"], norm(loss_only), delta=1e-5 * norm(loss_only))
    flat = jax.tree.map(lambda a, b: a - b, total, loss_only)
    self.assertAlmostEqual(got["regularizer_grad_norm"], norm(flat), delta=1e-3 * norm(flat))
    self.assertGreater(got["regularizer_grad_norm"], 0.0)
    self.assertAlmostEqual(got["ratio"], got["regularizer_grad_norm"] / got["loss_grad_norm"])

  def test_linear_in_the_coefficient_and_zero_without_a_term(self):
    key = jax.random.key(4)
    # (the entropy term: its compilations are half the Hessian term's third derivatives')
    one = meta.gradient_ratio(self.lopt, self.task, self._config("entropy", 1.0),
                              self.meta_params, key, num_truncations=2)
    ten = meta.gradient_ratio(self.lopt, self.task, self._config("entropy", 10.0),
                              self.meta_params, key, num_truncations=2)
    self.assertAlmostEqual(ten["ratio"], 10 * one["ratio"], delta=1e-4 * ten["ratio"])
    self.assertAlmostEqual(ten["loss_grad_norm"], one["loss_grad_norm"], places=6)
    plain = meta.gradient_ratio(self.lopt, self.task, self._config("none", None),
                                self.meta_params, key, num_truncations=2)
    self.assertEqual(plain["regularizer_grad_norm"], 0.0)
    self.assertEqual(plain["ratio"], 0.0)


if __name__ == "__main__":
  absltest.main()
