"""experiments.evaluate with several optimizers: one folder, one table, paired differences to
the first by hand, compilation apart, and the bad inputs (one line, exit 2, nothing written)."""

import json
import os

import numpy as np
from absl.testing import absltest, parameterized

from flatl2o import pretrained, stats
from flatl2o.compare import paired as compare
from tests.test_cli import run_binary


class ExpandTest(absltest.TestCase):

  def test_pretrained_star_is_every_shipped_one_in_order(self):
    got = compare.expand(["adam", "pretrained:*"])
    self.assertEqual(got, ("adam", *[f"pretrained:{n}" for n in pretrained.names()]))

  def test_repeated_and_lone(self):
    with self.assertRaisesRegex(ValueError, "lists adam more than once"):
      compare.expand(["adam", "sgd", "adam"])
    with self.assertRaisesRegex(ValueError, r"lists pretrained:l2o_dm more than once"):
      compare.expand(["pretrained:l2o_dm", "pretrained:*"])
    with self.assertRaisesRegex(ValueError, "at least two optimizers"):
      compare.expand(["adam"])


class CompareTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.out = os.path.join(absltest.get_default_test_tmpdir(), "compare")
    cls.config = compare.CompareConfig(
        task="mlp_sigmoid", dataset="digits", data_dir=None,
        optimizers=("sgd", "adam", "pretrained:rnnprop"), num_steps=40, batch_size=32,
        eval_every=20, seeds=(3, 4, 5), out_dir=cls.out)
    cls.summary = compare.compare(cls.config, log=lambda line: None)

  def test_one_folder_in_the_order_given(self):
    self.assertEqual(self.summary["optimizers"], ["sgd", "adam", "pretrained:rnnprop"])
    with open(os.path.join(self.out, "summary.json")) as f:
      self.assertEqual(json.load(f)["optimizers"], ["sgd", "adam", "pretrained:rnnprop"])
    for name in ("table.md", "metrics.jsonl", "curves.png"):
      self.assertTrue(os.path.exists(os.path.join(self.out, name)), name)
    with open(os.path.join(self.out, "table.md")) as f:
      rows = [l for l in f if l.startswith("| ") and not l.startswith("| optimizer")]
    self.assertEqual([r.split(" | ")[0][2:] for r in rows],
                     [self.summary["per_optimizer"][s]["label"] for s in self.config.optimizers])

  def test_paired_difference_to_the_first_by_hand(self):
    per = self.summary["per_optimizer"]
    first = [f["test_accuracy"] for f in per["sgd"]["final"]]
    for spec in ("adam", "pretrained:rnnprop"):
      mine = [f["test_accuracy"] for f in per[spec]["final"]]
      self.assertEqual([f["seed"] for f in per[spec]["final"]], [3, 4, 5])
      d = np.subtract(mine, first)
      got = per[spec]["minus_first"]["test_accuracy"]
      self.assertAlmostEqual(got["mean"], d.mean(), places=12)
      self.assertAlmostEqual(got["ci95"], stats.t_quantile(0.975, 2) * d.std(ddof=1) / np.sqrt(3),
                             places=9)
    self.assertNotIn("minus_first", per["sgd"])

  def test_p_values_are_holm_adjusted_over_the_table_by_hand(self):
    per = self.summary["per_optimizer"]
    p = [per[s]["minus_first"]["test_accuracy"]["p"] for s in ("adam", "pretrained:rnnprop")]
    low, high = sorted(p)
    expected = {low: min(1.0, 2 * low), high: max(min(1.0, 2 * low), min(1.0, high))}
    for spec, raw in zip(("adam", "pretrained:rnnprop"), p):
      self.assertAlmostEqual(per[spec]["minus_first"]["test_accuracy"]["p_holm"],
                             expected[raw], places=12)
    with open(os.path.join(self.out, "table.md")) as f:
      text = f.read()
    self.assertIn("| p | p (Holm) |", text)
    self.assertIn("Holm-adjusted over the table's 2 comparisons", text)

  def test_warm_up_is_timed_apart(self):
    self.assertGreater(self.summary["warmup_s"], 0.0)

  def test_compilation_is_apart_from_the_time_per_run(self):
    for spec, e in self.summary["per_optimizer"].items():
      self.assertGreaterEqual(e["compile_s"], 0.0, spec)
      self.assertGreater(e["seconds_per_run"], 0.0, spec)
    # the first seed of a fresh transformation compiles: its overhead is well above a run
    e = self.summary["per_optimizer"]["sgd"]
    self.assertGreater(e["compile_s"], e["seconds_per_run"])

  def test_the_same_seeds_give_every_optimizer_the_same_start(self):
    with open(os.path.join(self.out, "metrics.jsonl")) as f:
      records = [json.loads(l) for l in f]
    start = {(r["optimizer"], r["seed"]): r["test_loss"] for r in records if r["step"] == 0}
    for seed in (3, 4, 5):
      self.assertEqual(len({start[s, seed] for s in self.config.optimizers}), 1)


class BadInputTest(parameterized.TestCase):

  @parameterized.parameters(
      ("adam,lstm", "unknown optimizer 'lstm' in --optimizer; accepted: sgd"),
      ("adam,sgd,adam", "lists adam more than once"),
      ("pretrained:l2o_dm,pretrained:*", "lists pretrained:l2o_dm more than once"),
      ("adam,pretrained:nope", "unknown pretrained optimizer 'nope'; accepted: l2o_dm"),
  )
  def test_one_line_exit_2_nothing_written(self, value, message):
    out = os.path.join(self.create_tempdir().full_path, "out")
    proc = run_binary("experiments.evaluate", f"--optimizer={value}", f"--out_dir={out}")
    self.assertEqual(proc.returncode, 2, proc.stderr)
    self.assertIn(message, proc.stderr)
    self.assertLen(proc.stderr.strip().splitlines(), 1, proc.stderr)
    self.assertFalse(os.path.exists(out))

  def test_a_learning_rate_is_for_one_optimizer(self):
    out = os.path.join(self.create_tempdir().full_path, "out")
    proc = run_binary("experiments.evaluate", "--optimizer=adam,sgd", "--learning_rate=0.1",
                      f"--out_dir={out}")
    self.assertEqual(proc.returncode, 2, proc.stderr)
    self.assertIn("--learning_rate in a comparison is that of its one hand-designed "
                  "optimizer", proc.stderr)
    self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
  absltest.main()
