"""flatl2o.stats against hand-computed answers, and the folder rule of flatl2o.folders."""

import json
import math
import os

import numpy as np

from absl.testing import absltest, parameterized

from flatl2o import folders, stats

# Student t quantiles from printed tables (e.g. NIST/SEMATECH e-Handbook, 1.3.6.7.2).
T_TABLE = {(0.975, 1): 12.706205, (0.975, 2): 4.302653, (0.975, 3): 3.182446,
           (0.975, 4): 2.776445, (0.975, 9): 2.262157, (0.975, 30): 2.042272,
           (0.8, 2): 1.060660, (0.8, 4): 0.940965, (0.8, 9): 0.883404, (0.95, 5): 2.015048}


class TDistributionTest(parameterized.TestCase):

  @parameterized.parameters(*T_TABLE.items())
  def test_quantile_matches_the_table(self, where, value):
    p, df = where
    self.assertAlmostEqual(stats.t_quantile(p, df), value, places=5)
    self.assertAlmostEqual(stats.t_quantile(1 - p, df), -value, places=5)

  def test_cdf_closed_forms(self):
    # df = 1 is Cauchy: 1/2 + atan(t)/pi; df = 2: 1/2 + t / (2 sqrt(2 + t^2)).
    for t in (-3.0, -0.5, 0.0, 0.7, 4.0):
      self.assertAlmostEqual(stats.t_cdf(t, 1), 0.5 + math.atan(t) / math.pi, places=12)
      self.assertAlmostEqual(stats.t_cdf(t, 2), 0.5 + t / (2 * math.sqrt(2 + t * t)),
                             places=12)

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, "positive integer"):
      stats.t_cdf(1.0, 0)
    with self.assertRaisesRegex(ValueError, r"must lie in \(0, 1\)"):
      stats.t_quantile(1.0, 3)


class IntervalTest(absltest.TestCase):

  def test_t_interval_by_hand(self):
    # [2, 5, 8]: mean 5, s = 3, half width t(0.975, 2) * 3 / sqrt(3) = 4.302653 * 1.732051
    got = stats.interval([2.0, 5.0, 8.0])
    self.assertEqual((got["mean"], got["n"]), (5.0, 3))
    self.assertAlmostEqual(got["ci95"], 7.452418, places=5)

  def test_non_finite_values_are_left_out_and_one_unit_has_no_interval(self):
    got = stats.interval([1.0, float("nan"), float("inf")])
    self.assertEqual((got["mean"], got["n"]), (1.0, 1))
    self.assertTrue(math.isnan(got["ci95"]))
    self.assertEqual(stats.interval([])["n"], 0)

  def test_paired_difference_by_hand(self):
    # d = [0.05, -0.02, 0.10, 0.05]: mean 0.045, s = sqrt(0.0073 / 3) = 0.0493288,
    # t = 0.045 / (0.0493288 / 2) = 1.824491, half width 3.182446 * 0.0246644 = 0.0784932,
    # p = 2 * (1 - F_3(1.824491)) = 0.165577.
    got = stats.paired_difference([0.90, 0.80, 0.70, 0.95], [0.85, 0.82, 0.60, 0.90])
    self.assertAlmostEqual(got["mean"], 0.045)
    self.assertEqual(got["n"], 4)
    self.assertAlmostEqual(got["ci95"], 0.0784932, places=6)
    self.assertAlmostEqual(got["t"], 1.824491, places=5)
    self.assertAlmostEqual(got["p"], 0.165577, places=5)
    with self.assertRaisesRegex(ValueError, "same number of units"):
      stats.paired_difference([1.0], [1.0, 2.0])


class HolmTest(absltest.TestCase):

  def test_known_p_values(self):
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 -> max(0.06, 0.04)
    got = stats.holm([0.01, 0.04, 0.03, 0.005])
    for a, b in zip(got["adjusted"], [0.03, 0.06, 0.06, 0.02]):
      self.assertAlmostEqual(a, b)
    self.assertEqual(got["rejected"], [True, False, False, True])

  def test_adjusted_values_stop_at_one(self):
    self.assertEqual(stats.holm([0.6, 0.9])["adjusted"], [1.0, 1.0])


class MinimumDetectableEffectTest(parameterized.TestCase):

  # The exact MDE in units of sd (two-sided, alpha 0.05, power 0.8): the effect whose
  # noncentral-t power is 0.8. The shifted-central-t shortcut, (t(0.975) + t(0.8)) / sqrt(n),
  # gives 9.957893 / 1.662476 / 0.994714 instead: low by 14% / 1.2% / 0.13%.
  EXACT = {2: 11.549888, 5: 1.681997, 10: 0.996001}

  @parameterized.parameters(*EXACT.items())
  def test_exact_values(self, n, mde):
    self.assertAlmostEqual(stats.minimum_detectable_effect(1.0, n), mde, places=5)
    self.assertAlmostEqual(stats.minimum_detectable_effect(0.02, n), 0.02 * mde, places=7)

  @parameterized.parameters(2, 5, 10)
  def test_power_by_integrating_over_the_sample_variance(self, n):
    # An independent route to the power at the MDE: given V ~ chi2(n - 1), the t statistic
    # exceeds c when Z + ncp > c sqrt(V / (n - 1)), Z standard normal.
    from scipy import integrate  # pylint: disable=g-import-not-at-top
    from scipy import stats as st  # pylint: disable=g-import-not-at-top
    df, mde = n - 1, stats.minimum_detectable_effect(1.0, n)
    c, ncp = st.t.ppf(0.975, df), mde * math.sqrt(n)
    rejects = lambda v: st.chi2.pdf(v, df) * (st.norm.sf(c * math.sqrt(v / df) - ncp)
                                              + st.norm.cdf(-c * math.sqrt(v / df) - ncp))
    self.assertAlmostEqual(integrate.quad(rejects, 0, math.inf, limit=200)[0], 0.8, places=6)

  def test_simulated_paired_t_tests_reject_with_the_stated_power(self):
    # 200,000 paired t-tests of 5 normal differences with mean MDE, sd 1: 80% reject
    # (binomial sd of the rate: 0.0009).
    n, mde = 5, stats.minimum_detectable_effect(1.0, 5)
    d = np.random.default_rng(0).normal(mde, 1.0, size=(200_000, n))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    self.assertAlmostEqual(float(np.mean(np.abs(t) > stats.t_quantile(0.975, n - 1))), 0.8,
                           delta=0.003)

  def test_power_and_bad_arguments(self):
    self.assertAlmostEqual(stats.paired_power(0.0, 1.0, 5), 0.05, places=10)
    self.assertEqual(stats.minimum_detectable_effect(0.0, 5), 0.0)
    with self.assertRaisesRegex(ValueError, "at least 2 units"):
      stats.minimum_detectable_effect(1.0, 1)
    with self.assertRaisesRegex(ValueError, "power must lie"):
      stats.minimum_detectable_effect(1.0, 5, power=0.01)
    with self.assertRaisesRegex(ValueError, "must be positive"):
      stats.paired_power(1.0, 0.0, 5)


class SpearmanTest(absltest.TestCase):

  def test_hand_ranked_example(self):
    # ranks x = 1..6, y = [2, 1, 4, 3, 6, 5]: sum d^2 = 6, rho = 1 - 6 * 6 / (6 * 35) = 29/35
    got = stats.spearman([1, 2, 3, 4, 5, 6], [20, 10, 40, 30, 60, 50])
    self.assertAlmostEqual(got["rho"], 29 / 35)
    z, half = math.atanh(29 / 35), 1.959964 * math.sqrt(1.06 / 3)
    self.assertAlmostEqual(got["low"], math.tanh(z - half), places=5)
    self.assertAlmostEqual(got["high"], math.tanh(z + half), places=5)

  def test_ties_get_average_ranks(self):
    self.assertEqual(list(stats.ranks([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    # ranks [1, 2.5, 2.5, 4] vs [1, 3, 2, 4]: Pearson of the ranks = 4.5 / sqrt(4.5 * 5)
    got = stats.spearman([1, 2, 2, 3], [1, 3, 2, 4])
    self.assertAlmostEqual(got["rho"], 4.5 / math.sqrt(22.5))

  def test_too_few_points_have_no_interval(self):
    got = stats.spearman([1, 2, 3], [1, 3, 2])
    self.assertAlmostEqual(got["rho"], 0.5)
    self.assertTrue(math.isnan(got["low"]))


class ClaimFolderTest(absltest.TestCase):

  def test_new_same_and_another(self):
    path = os.path.join(self.create_tempdir().full_path, "run")
    self.assertTrue(folders.claim_folder(path, {"a": 1, "b": (1, 2)}))
    with open(os.path.join(path, "identity.json")) as f:
      self.assertEqual(json.load(f), {"a": 1, "b": [1, 2]})
    self.assertFalse(folders.claim_folder(path, {"a": 1, "b": (1, 2)}))  # tuples read back
    with self.assertRaisesRegex(folders.FolderClaimError, r"\(b was \[1, 2\], now \[1, 3\]\)"):
      folders.claim_folder(path, {"a": 1, "b": (1, 3)})

  def test_a_folder_without_the_identity_file_is_refused(self):
    path = self.create_tempdir()
    path.create_file("other.txt")
    with self.assertRaises(folders.FolderClaimError) as caught:
      folders.claim_folder(path.full_path, {"a": 1})
    self.assertEqual(caught.exception.reason, "foreign")
    self.assertFalse(os.path.exists(os.path.join(path.full_path, "identity.json")))

  def test_normalize_reads_an_older_identity(self):
    path = self.create_tempdir().full_path
    folders.claim_folder(path, {"a": 1})
    add_default = lambda found, wanted: {"b": 0, **found}
    folders.claim_folder(path, {"a": 1, "b": 0}, normalize=add_default)
    with self.assertRaises(folders.FolderClaimError) as caught:
      folders.claim_folder(path, {"a": 1, "b": 1}, normalize=add_default)
    self.assertEqual((caught.exception.found, caught.exception.identity),
                     ({"a": 1, "b": 0}, {"a": 1, "b": 1}))

  def test_identity_inside_another_file(self):
    path = self.create_tempdir()
    self.assertTrue(folders.claim_folder(path.full_path, {"a": 1}, filename="summary.json",
                                         key="identity", write=False))
    self.assertEmpty(os.listdir(path.full_path))  # the summary, written later, holds it
    path.create_file("summary.json", content=json.dumps({"identity": {"a": 1}, "x": 2}))
    self.assertFalse(folders.claim_folder(path.full_path, {"a": 1}, filename="summary.json",
                                          key="identity"))


if __name__ == "__main__":
  absltest.main()
