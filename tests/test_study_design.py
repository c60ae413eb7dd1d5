"""The powered study's parts by hand: the primary comparisons (per-seed paired differences,
interval, p-value, MDE, Holm), the sweep by decades, the matched-loss level, the shipped
sweep and the configuration's bad inputs."""

import dataclasses
import json
import math
import os

import numpy as np
from absl.testing import absltest, parameterized

from flatl2o import stats, study
from flatl2o.study import analysis
from flatl2o.study import sweep as sweep_lib
from flatl2o.study.stages import matched_level

# t quantiles by hand (tables): t_{0.975, 4}, t_{0.8, 4}.
T975_4 = 2.7764451


def _cells(contender, model, kind, coefficient, values, optimizee=study.SEEN,
           metric="test_accuracy"):
  """Meta-test cells: values[meta_seed][test_seed index] of `metric`."""
  return [{"contender": contender.format(seed=m), "optimizee": optimizee, "model": model,
           "regularizer": kind, "coefficient": coefficient, "meta_seed": m,
           "test_seed": 1000 + t, metric: v, "train_loss": 0.1, "test_accuracy": v}
          for m, row in enumerate(values) for t, v in enumerate(row)]


def _results(reg, plain, budget=None):
  """Five meta seeds x two test seeds: hessian (coefficient 10) against plain; `budget`
  the same-budget plain runs (None: the full-budget ones stand in)."""
  cells = (_cells("l2o_dm-hessian-10-s{seed}", "l2o_dm", "hessian", 10.0, reg)
           + _cells("l2o_dm-none-s{seed}", "l2o_dm", "none", None, plain))
  contenders = {}
  for m in range(len(reg)):
    contenders[f"l2o_dm-hessian-10-s{m}"] = {"model": "l2o_dm", "regularizer": "hessian",
                                             "coefficient": 10.0, "meta_seed": m,
                                             "best_meta_step": 100 + m}
    contenders[f"l2o_dm-none-s{m}"] = {"model": "l2o_dm", "regularizer": "none",
                                       "coefficient": None, "meta_seed": m,
                                       "best_meta_step": 700}
  same_budget = {}
  if budget is not None:
    cells += _cells("l2o_dm-none-s{seed}@100", "l2o_dm", "none", None, budget)
    for m in range(len(reg)):
      contenders[f"l2o_dm-none-s{m}@100"] = {"model": "l2o_dm", "regularizer": "none",
                                             "coefficient": None, "meta_seed": m,
                                             "best_meta_step": 100, "control": True}
      same_budget[f"l2o_dm-hessian-10-s{m}"] = f"l2o_dm-none-s{m}@100"
  return {"cells": cells, "contenders": contenders, "same_budget": same_budget,
          "coefficients": {"hessian": 10.0}}


class PrimaryComparisonTest(parameterized.TestCase):

  REG = [[0.91, 0.93], [0.90, 0.90], [0.95, 0.91], [0.92, 0.96], [0.90, 0.94]]
  PLAIN = [[0.90, 0.90], [0.91, 0.89], [0.92, 0.90], [0.93, 0.93], [0.88, 0.90]]
  BUDGET = [[0.80, 0.80], [0.81, 0.79], [0.82, 0.80], [0.83, 0.83], [0.78, 0.80]]

  def test_full_budget_difference_by_hand(self):
    entries = analysis.comparisons(_results(self.REG, self.PLAIN))
    (full,) = [e for e in entries if e["control"] == "full_budget"]
    # per meta seed: mean over the two test seeds of reg - plain
    d = [(0.01 + 0.03) / 2, (-0.01 + 0.01) / 2, (0.03 + 0.01) / 2, (-0.01 + 0.03) / 2,
         (0.02 + 0.04) / 2]
    mean, sd = np.mean(d), np.std(d, ddof=1)
    self.assertAlmostEqual(full["difference"], mean, places=12)
    half = T975_4 * sd / math.sqrt(5)
    np.testing.assert_allclose(full["ci95"], [mean - half, mean + half], rtol=1e-5)
    t = mean / (sd / math.sqrt(5))
    self.assertAlmostEqual(full["p_value"], 2 * (1 - stats.t_cdf(t, 4)), places=10)
    self.assertAlmostEqual(full["mde"], 1.681997 * sd, places=5)  # exact noncentral-t MDE at n = 5
    self.assertEqual(full["meta_seeds"], 5)
    self.assertEqual(full["selected_meta_steps"], [100, 101, 102, 103, 104])
    self.assertEqual(full["control_meta_steps"], [700] * 5)
    self.assertEqual(full["family"], "secondary")  # the primary control is the same budget

  def test_same_budget_is_the_primary_family_and_holm_is_within_families(self):
    entries = analysis.comparisons(_results(self.REG, self.PLAIN, self.BUDGET))
    (same,) = [e for e in entries if e["control"] == "same_budget"]
    (full,) = [e for e in entries if e["control"] == "full_budget"]
    self.assertEqual(same["family"], "primary")
    d = np.mean(np.asarray(self.REG) - np.asarray(self.BUDGET), axis=1)
    self.assertAlmostEqual(same["difference"], d.mean(), places=12)
    self.assertEqual(same["control_meta_steps"], [100] * 5)
    # one test per family here, so Holm leaves each p-value as it is
    self.assertAlmostEqual(same["p_holm"], same["p_value"])
    self.assertAlmostEqual(full["p_holm"], full["p_value"])

  def test_holm_over_the_secondaries(self):
    results = _results(self.REG, self.PLAIN, self.BUDGET)
    for optimizee in ("mlp_relu", "mlp_deep"):
      for name, values in (("l2o_dm-hessian-10-s{seed}", self.REG),
                           ("l2o_dm-none-s{seed}", self.PLAIN),
                           ("l2o_dm-none-s{seed}@100", self.BUDGET)):
        kind = "hessian" if "hessian" in name else "none"
        results["cells"] += _cells(name, "l2o_dm", kind, 10.0 if kind == "hessian" else None,
                                   values, optimizee=optimizee)
    entries = analysis.comparisons(results)
    secondary = [e for e in entries if e["family"] == "secondary"]
    # full budget on 3 optimizees (accuracy; + train loss on the 2 unseen) and same budget on
    # the 2 unseen (accuracy + train loss)
    self.assertLen(secondary, 3 + 2 + 2 * 2)
    want = stats.holm([e["p_value"] for e in secondary])["adjusted"]
    self.assertEqual([e["p_holm"] for e in secondary], want)
    self.assertTrue(all(e["p_holm"] >= e["p_value"] for e in secondary))

  def test_test_seeds_are_paired_not_pooled(self):
    # Unpaired test seeds (one run missing) drop out of that seed's mean difference.
    results = _results(self.REG, self.PLAIN)
    results["cells"] = [c for c in results["cells"] if not (
        c["contender"] == "l2o_dm-none-s0" and c["test_seed"] == 1001)]
    (full,) = analysis.comparisons(results)
    self.assertAlmostEqual(full["per_seed"]["0"], 0.91 - 0.90)

  def test_the_answer_names_interval_p_and_mde(self):
    entries = analysis.comparisons(_results(self.REG, self.PLAIN, self.BUDGET))
    (line,) = analysis.answer_lines(entries)
    self.assertIn("over 5 meta-training seeds", line)
    self.assertIn("would have been found with 80% power", line)


  def test_an_unpaired_seed_is_a_visible_warning_not_a_silent_drop(self):
    results = _results(self.REG, self.PLAIN, self.BUDGET)
    del results["same_budget"]["l2o_dm-hessian-10-s3"]
    results["unpaired"] = {"l2o_dm-hessian-10-s3": "every validation of plain collapsed"}
    entries = analysis.comparisons(results)
    (same,) = [e for e in entries if e["control"] == "same_budget"]
    self.assertEqual(same["meta_seeds"], 4)
    self.assertEqual(same["unpaired"], {"3": "every validation of plain collapsed"})
    lines = analysis.answer_lines(entries)
    self.assertLen(lines, 2)
    self.assertIn("Warning: l2o_dm + hessian leaves out 1 meta-training seed", lines[1])
    self.assertIn("seed 3: every validation of plain collapsed", lines[1])
    self.assertIn(lines[1], study.markdown({**results, "primary": entries,
                                            "matched_levels": {}, "sweep": []}, {}))


class SameBudgetSelectionTest(parameterized.TestCase):
  """The control is plain's best validation up to and including the regularized run's
  selected meta-step: the budget is a validation step of plain too, so the boundary is the
  common case."""

  VALIDATIONS = [{"iteration": 50, "score": 0.90, "collapsed": False},
                 {"iteration": 100, "score": 0.95, "collapsed": False},
                 {"iteration": 150, "score": 0.97, "collapsed": False},
                 {"iteration": 200, "score": 0.96, "collapsed": False}]

  @parameterized.parameters(
      (100, 100),   # the budget step itself is plain's validation: it is included
      (99, 50), (149, 100), (150, 150), (200, 150), (49, None))
  def test_best_within_the_budget(self, budget, expected):
    self.assertEqual(study.best_within(self.VALIDATIONS, budget), expected)

  def test_a_collapsed_validation_at_the_budget_is_never_picked(self):
    records = [dict(v, collapsed=v["iteration"] == 100) for v in self.VALIDATIONS]
    self.assertEqual(study.best_within(records, 100), 50)

  def test_a_tie_keeps_the_first(self):
    records = self.VALIDATIONS[:2] + [{"iteration": 150, "score": 0.95, "collapsed": False}]
    self.assertEqual(study.best_within(records, 150), 100)

  def test_unpaired_reasons(self):
    from flatl2o.study import driver  # pylint: disable=g-import-not-at-top
    plain = {"best_meta_step": 150, "validations": self.VALIDATIONS}
    self.assertIsNone(driver.unpaired_reason({"best_meta_step": 100}, plain))
    self.assertIn("regularized run collapsed",
                  driver.unpaired_reason({"best_meta_step": -1}, plain))
    self.assertIn("plain collapsed", driver.unpaired_reason(
        {"best_meta_step": 100}, {**plain, "best_meta_step": -1}))
    self.assertIn("up to meta-step 40", driver.unpaired_reason({"best_meta_step": 40}, plain))
    self.assertTrue(driver.control_is_plain({"best_meta_step": 150}, plain))
    self.assertFalse(driver.control_is_plain({"best_meta_step": 100}, plain))


class SweepByDecadesTest(parameterized.TestCase):

  @staticmethod
  def _runs(collapse_at, accuracy):
    def train(c):
      return [{"name": f"s{seed}-{c:g}", "collapsed": c >= collapse_at,
               "best_validation_accuracy": -np.inf if c >= collapse_at else accuracy(c, seed),
               "best_meta_step": -1 if c >= collapse_at else 100,
               "grad_ratio": {"ratio": 0.01 * c}} for seed in (0, 1)]
    return train

  def test_up_by_decades_until_collapse(self):
    term = sweep_lib.sweep_term("hessian", 1e-3, 1e5,
                                self._runs(1000.0, lambda c, s: 0.9 + 0.01 * (c == 10.0)))
    self.assertEqual([p["coefficient"] for p in term["points"]], [1.0, 10.0, 100.0, 1000.0])
    self.assertTrue(term["reached_collapse"])
    self.assertEqual(term["chosen"], 10.0)
    self.assertIn("collapses at 1000", sweep_lib.summary_line(term))
    self.assertAlmostEqual(term["points"][1]["grad_ratio"], 0.1)

  def test_a_term_that_never_collapses_is_swept_to_the_largest_and_says_so(self):
    term = sweep_lib.sweep_term("entropy", 1e-3, 1e5, self._runs(np.inf, lambda c, s: 0.9))
    self.assertEqual([p["coefficient"] for p in term["points"]],
                     [1.0, 10.0, 100.0, 1e3, 1e4, 1e5])
    self.assertFalse(term["reached_collapse"])
    self.assertIn("never collapsed up to 100000", sweep_lib.summary_line(term))
    self.assertEqual(term["chosen"], 1.0)  # ties go to the smaller coefficient

  def test_down_when_one_already_collapses(self):
    term = sweep_lib.sweep_term("entropy", 1e-3, 1e5, self._runs(0.05, lambda c, s: 0.9))
    self.assertEqual([p["coefficient"] for p in term["points"]], [0.01, 0.1, 1.0])
    self.assertEqual(term["chosen"], 0.01)

  def test_a_point_where_one_seed_collapsed_is_not_chosen(self):
    runs = [{"name": "a", "collapsed": False, "best_validation_accuracy": 0.99,
             "best_meta_step": 50}, {"name": "b", "collapsed": True,
                                      "best_validation_accuracy": -np.inf, "best_meta_step": -1}]
    p = sweep_lib.point("hessian", 10.0, runs)
    self.assertFalse(p["collapsed"])  # not every seed: the sweep goes on
    self.assertEqual(p["collapsed_runs"], 1)
    self.assertAlmostEqual(p["validation_accuracy"], 0.99)
    ok = sweep_lib.point("hessian", 1.0, [dict(runs[0], best_validation_accuracy=0.95)] * 2)
    self.assertEqual(sweep_lib.choose([ok, p]), 1.0)


class MatchedLevelTest(absltest.TestCase):

  def test_lowest_level_four_of_five_trained_runs_reach(self):
    runs = [{"collapsed": False, "train_loss_curve": [np.nan, 1.0, v]}
            for v in (0.5, 0.4, 0.3, 0.2, 0.1)]
    runs.append({"collapsed": True, "train_loss_curve": [np.nan, 2.0, 2.1]})
    self.assertEqual(matched_level(runs), 0.4)
    self.assertTrue(np.isnan(matched_level(runs[-1:])))


class ShippedSweepTest(absltest.TestCase):

  def test_the_shipped_sweep_is_complete(self):
    data = sweep_lib.load()
    for key in ("command", "date", "machine", "wall_time_s", "sweep", "sweep_terms"):
      self.assertIn(key, data)
    self.assertIn("--preset=sweep", data["command"])
    for kind in ("hessian", "entropy"):
      term = data["sweep_terms"][kind]
      self.assertEqual(data["coefficients"][kind],
                       term["chosen"] if term["chosen"] is not None else
                       min(p["coefficient"] for p in term["points"]))
      # by decades, each point with its gradient ratio and seeds
      coefficients = [p["coefficient"] for p in term["points"]]
      for a, b in zip(coefficients, coefficients[1:]):
        self.assertAlmostEqual(b / a, 10.0)
      for p in term["points"]:
        self.assertEqual(p["runs"], len(study.PRESETS["sweep"].sweep_seeds))
        self.assertIn("grad_ratio", p)

  def test_a_missing_or_wrong_sweep_file_is_one_line(self):
    missing = os.path.join(self.create_tempdir().full_path, "nope.json")
    with self.assertRaisesRegex(ValueError, "no sweep at .*nope.json: run"):
      study.StudyConfig(sweep_file=missing)
    wrong = self.create_tempfile("x.json", content=json.dumps({"coefficients": {"hessian": 1}}))
    with self.assertRaisesRegex(ValueError, "is not a sweep"):
      study.StudyConfig(sweep_file=wrong.full_path)
    with self.assertRaisesRegex(ValueError, "sweeps them itself"):
      study.StudyConfig(preset="cpu", sweep_file=wrong.full_path)


class StudyConfigTest(parameterized.TestCase):

  def test_the_default_is_the_primary_question(self):
    config = study.StudyConfig()
    self.assertEqual(config.preset, "primary")
    self.assertEqual(config.models, ("l2o_dm",))
    self.assertEqual(config.optimizees, ("mlp_sigmoid", "mlp_relu", "mlp_deep"))
    self.assertGreaterEqual(len(config.meta_seeds), 5)
    s = config.settings
    self.assertGreaterEqual(s.test_seeds, 5)
    self.assertGreaterEqual(s.min_meta_iterations, 600)
    self.assertGreaterEqual(s.num_inner_steps, 200)
    self.assertEqual(config.identity()["coefficients"], {
        k: float(v) for k, v in sweep_lib.load()["coefficients"].items()})
    self.assertGreaterEqual(len(study.StudyConfig(preset="gpu").meta_seeds), 8)

  @parameterized.parameters(((0,), "at least 2 distinct"), ((1, 1), "at least 2 distinct"),
                            ((0, -1), "at least 2 distinct"))
  def test_fewer_than_two_meta_seeds_is_refused(self, seeds, message):
    with self.assertRaisesRegex(ValueError, message):
      study.StudyConfig(preset="smoke", meta_seeds=seeds)

  def test_meta_seeds_replace_the_presets(self):
    config = study.StudyConfig(preset="smoke", meta_seeds=(3, 4, 5))
    self.assertEqual(config.settings.meta_seeds, (3, 4, 5))
    self.assertEqual(config.identity()["settings"]["meta_seeds"], (3, 4, 5))


if __name__ == "__main__":
  absltest.main()


class HorizonTest(absltest.TestCase):
  """The horizon is a factor of the comparisons, read from each run's evaluations."""

  def _with_curves(self, results):
    # Each run evaluated at steps 200 and 1000: the curve's first value is 0.5 below the end.
    for c in results["cells"]:
      c["eval_steps"] = [200, 1000]
      c["test_accuracy_curve"] = [c["test_accuracy"] - 0.5, c["test_accuracy"]]
      c["train_loss_curve"] = [c["train_loss"] * 2, c["train_loss"]]
    results["config"] = {"settings": {"horizons": [200, 1000], "test_horizon": 1000}}
    return results

  def test_every_comparison_at_each_horizon_and_the_first_is_primary(self):
    p = PrimaryComparisonTest
    reg = [[v + 0.01 * m for v in row] for m, row in enumerate(p.REG)]  # differs by horizon
    results = self._with_curves(_results(p.REG, p.PLAIN, p.BUDGET))
    for c in results["cells"]:  # the early evaluation: regularized runs ahead by 0.01 * seed
      if "hessian" in c["contender"]:
        c["test_accuracy_curve"][0] = reg[c["meta_seed"]][c["test_seed"] - 1000] - 0.5
    entries = analysis.comparisons(results)
    same = {e["horizon"]: e for e in entries if e["control"] == "same_budget"}
    self.assertEqual(sorted(same), [200, 1000])
    self.assertEqual(same[200]["family"], "primary")
    self.assertEqual(same[1000]["family"], "secondary")
    end = np.mean(np.asarray(p.REG) - np.asarray(p.BUDGET), axis=1)
    early = np.mean(np.asarray(reg) - np.asarray(p.BUDGET), axis=1)
    self.assertAlmostEqual(same[1000]["difference"], end.mean(), places=12)
    self.assertAlmostEqual(same[200]["difference"], early.mean(), places=12)

  def test_at_horizon(self):
    cell = {"eval_steps": [50, 100], "test_accuracy_curve": [0.7, 0.8], "test_accuracy": 0.8}
    self.assertEqual(analysis.at_horizon(cell, "test_accuracy", 50), 0.7)
    self.assertEqual(analysis.at_horizon(cell, "test_accuracy", 100), 0.8)
    self.assertEqual(analysis.at_horizon(cell, "test_accuracy", None), 0.8)
    self.assertTrue(math.isnan(analysis.at_horizon(cell, "test_accuracy", 75)))

  def test_bad_horizons_are_refused(self):
    for horizons in ((0,), (75,), (2000,), (200, 200)):
      study.PRESETS["_bad_horizons"] = dataclasses.replace(study.PRESETS["primary"],
                                                           horizons=horizons)
      try:
        with self.assertRaisesRegex(ValueError, "each a distinct positive multiple"):
          study.StudyConfig(preset="_bad_horizons")
      finally:
        del study.PRESETS["_bad_horizons"]


class VarianceComponentsTest(absltest.TestCase):

  def test_by_hand(self):
    # 3 meta seeds x 2 test seeds: rows [1, 3], [2, 4], [6, 8]; row means 2, 3, 7 (grand 4);
    # MSB = 2 * (4 + 1 + 9) / 2 = 14, MSW = (1 + 1) * 3 / (3 * 1) = 2;
    # between meta seeds (14 - 2) / 2 = 6, share 6 / (6 + 2 / 2) = 6 / 7.
    values = {(m, t): v for m, row in enumerate([[1, 3], [2, 4], [6, 8]])
              for t, v in enumerate(row)}
    got = analysis.variance_components(values)
    self.assertAlmostEqual(got["between_meta_seeds"], 6.0)
    self.assertAlmostEqual(got["between_test_seeds"], 2.0)
    self.assertAlmostEqual(got["meta_share"], 6 / 7)
    self.assertEqual((got["meta_seeds"], got["test_seeds"]), (3, 2))

  def test_a_seed_missing_a_run_is_left_out_and_the_between_part_is_not_negative(self):
    values = {(0, 0): 1.0, (0, 1): 3.0, (1, 0): 3.0, (1, 1): 1.0, (2, 0): 5.0}
    got = analysis.variance_components(values)
    self.assertEqual(got["meta_seeds"], 2)  # seed 2 has no run on test seed 1
    self.assertEqual(got["between_meta_seeds"], 0.0)  # equal means: MSB 0 < MSW
    self.assertAlmostEqual(got["between_test_seeds"], 2.0)

  def test_results_carry_plain_and_each_difference(self):
    p = PrimaryComparisonTest
    got = analysis.variance(_results(p.REG, p.PLAIN, p.BUDGET))
    self.assertEqual([(v["model"], v["regularizer"], v["quantity"]) for v in got],
                     [("l2o_dm", "none", "test_accuracy"),
                      ("l2o_dm", "hessian", "difference_same_budget")])
    want = analysis.variance_components(
        {(m, t): p.REG[m][t] - p.BUDGET[m][t] for m in range(5) for t in range(2)})
    self.assertEqual(got[1]["between_meta_seeds"], want["between_meta_seeds"])
    plain = analysis.variance_components({(m, t): p.PLAIN[m][t] for m in range(5)
                                          for t in range(2)})
    self.assertEqual(got[0]["between_test_seeds"], plain["between_test_seeds"])


class ModelCoefficientsTest(absltest.TestCase):

  def _sweep(self, **extra):
    path = os.path.join(self.create_tempdir().full_path, "sweep.json")
    with open(path, "w") as f:
      json.dump({"coefficients": {"hessian": 1.0, "entropy": 1000.0}, **extra}, f)
    return path

  def test_an_older_sweep_covers_l2o_dm_only(self):
    path = self._sweep()
    got = study.StudyConfig(sweep_file=path).model_coefficients()
    self.assertEqual(got, {"l2o_dm": {"hessian": 1.0, "entropy": 1000.0}})
    with self.assertRaisesRegex(ValueError, r"no coefficients for rnnprop \(it covers l2o_dm\)"
                                r".*--preset=sweep --models=rnnprop"):
      study.StudyConfig(sweep_file=path, models=("l2o_dm", "rnnprop"))

  def test_each_model_takes_its_own(self):
    path = self._sweep(model_coefficients={
        "l2o_dm": {"hessian": 1.0, "entropy": 1000.0},
        "rnnprop": {"hessian": 10.0, "entropy": 100.0}})
    config = study.StudyConfig(sweep_file=path, models=("rnnprop", "l2o_dm"))
    self.assertEqual(config.model_coefficients()["rnnprop"], {"hessian": 10.0, "entropy": 100.0})
    self.assertEqual(config.identity()["coefficients"], {"hessian": 10.0, "entropy": 100.0})


class HorizonFlagTest(absltest.TestCase):

  def test_given_horizons_replace_the_presets_and_set_the_test_horizon(self):
    config = study.StudyConfig(horizons=(200, 1000))
    self.assertEqual(config.settings.comparison_horizons, (200, 1000))
    self.assertEqual(config.settings.test_horizon, 1000)
    self.assertEqual(study.StudyConfig().settings.comparison_horizons, (400,))
    self.assertIn("--horizons=200,1000", study.study_command(config))

  def test_bad_horizons(self):
    for horizons, message in (((), "at least one"), ((0,), "positive multiple"),
                              ((-50, 100), "positive multiple"), ((75,), "positive multiple"),
                              ((100, 100), "distinct")):
      with self.assertRaisesRegex(ValueError, message):
        study.StudyConfig(horizons=horizons)
