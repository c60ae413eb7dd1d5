"""flatl2o.study and experiments.reproduce: the study's statistics by hand, the smoke preset
end to end, and the study from Python (as a notebook runs it)."""

import gzip
import json
import os
import shutil
import tempfile
from unittest import mock

import numpy as np
import pytest
from absl.testing import absltest, parameterized

from flatl2o import study
from tests.test_cli import run_binary


def _write_idx_folder(folder, n=120, seed=0):
  rng = np.random.default_rng(seed)
  for prefix in ("train", "t10k"):
    images = rng.integers(0, 256, (n, 6, 6), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
      header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
      with gzip.open(os.path.join(folder, f"{prefix}-{kind}-ubyte.gz"), "wb") as f:
        f.write(header + array.tobytes())


def _cell(meta_seed, test_seed, **values):
  return {"meta_seed": meta_seed, "test_seed": test_seed, **values}


class StatisticsTest(parameterized.TestCase):

  def test_best_within_budget(self):
    validations = [{"iteration": 20, "score": 0.90, "collapsed": False},
                   {"iteration": 40, "score": 0.95, "collapsed": False},
                   {"iteration": 60, "score": 0.99, "collapsed": True},
                   {"iteration": 80, "score": 0.97, "collapsed": False}]
    self.assertEqual(study.best_within(validations, 100), 80)
    self.assertEqual(study.best_within(validations, 79), 40)  # the collapsed one never
    self.assertEqual(study.best_within(validations, 39), 20)
    self.assertIsNone(study.best_within(validations, 10))

  def test_coefficient_is_best_validation_that_did_not_collapse(self):
    sweep = [{"coefficient": 1.0, "best_validation_accuracy": 0.95, "collapsed": False},
             {"coefficient": 30.0, "best_validation_accuracy": 0.96, "collapsed": False},
             {"coefficient": 1000.0, "best_validation_accuracy": 0.99, "collapsed": True}]
    self.assertEqual(study.choose_coefficient(sweep), 30.0)
    # A tie goes to the smaller coefficient (the smaller change to the objective).
    sweep[0]["best_validation_accuracy"] = 0.96
    self.assertEqual(study.choose_coefficient(sweep), 1.0)
    self.assertIsNone(study.choose_coefficient(sweep[2:]))

  def test_interval_over_meta_seeds_of_per_seed_means(self):
    cells = [_cell(0, 1000, x=1.0), _cell(0, 1001, x=3.0),   # seed 0 mean 2
             _cell(1, 1000, x=4.0), _cell(1, 1001, x=6.0),   # seed 1 mean 5
             _cell(2, 1000, x=8.0), _cell(2, 1001, x=8.0)]   # seed 2 mean 8
    s = study.over_seeds(study.by_seed(cells, "x"))
    self.assertAlmostEqual(s["mean"], 5.0)
    self.assertEqual(s["n"], 3)
    # t(0.975, 2) * std([2, 5, 8], ddof=1) / sqrt(3) = 4.302653 * 3 / 1.732051
    self.assertAlmostEqual(s["ci95"], 4.302653 * 3.0 / np.sqrt(3.0), places=4)

  def test_one_meta_seed_interval_is_over_test_seeds(self):
    cells = [_cell(None, 1000, x=1.0), _cell(None, 1001, x=2.0), _cell(None, 1002, x=3.0)]
    s = study.over_seeds(study.by_seed(cells, "x"))
    self.assertEqual((s["mean"], s["n"]), (2.0, 3))
    self.assertAlmostEqual(s["ci95"], 4.302653 * 1.0 / np.sqrt(3.0), places=4)

  def test_paired_difference_matches_seed_by_seed(self):
    a = [_cell(0, 1000, x=0.90), _cell(0, 1001, x=0.80), _cell(1, 1000, x=0.70),
         _cell(1, 1001, x=0.95)]
    b = [_cell(0, 1000, x=0.85), _cell(0, 1001, x=0.82), _cell(1, 1000, x=0.60),
         _cell(1, 1001, x=0.90), _cell(1, 1002, x=0.10)]  # unpaired: ignored
    d = study.paired(study.by_seed(a, "x"), study.by_seed(b, "x"))
    per_seed = [np.mean([0.05, -0.02]), np.mean([0.10, 0.05])]
    self.assertAlmostEqual(d["mean"], np.mean(per_seed))
    self.assertAlmostEqual(d["ci95"], 12.706205 * np.std(per_seed, ddof=1) / np.sqrt(2), places=4)

  def test_matched_values_of_runs_that_never_reach_the_level_are_left_out(self):
    cells = [_cell(None, 1000, matched={"step": 100, "hessian_trace": 2.0}),
             _cell(None, 1001, matched={"step": None}),
             _cell(None, 1002, matched={"step": 50, "hessian_trace": 4.0})]
    s = study.over_seeds(study.by_seed(cells, "hessian_trace", matched=True))
    self.assertEqual((s["mean"], s["n"]), (3.0, 2))

  def test_bad_configuration(self):
    for kwargs, message in (({"preset": "fast"}, "unknown preset 'fast'; accepted: primary, sweep, smoke, cpu, models, gpu"),
                            ({"models": ("l2o_dm", "lstm")}, "accepted: l2o_dm, rnnprop"),
                            ({"regularizers": ("none", "sam")}, "accepted: none, hessian, entropy"),
                            ({"regularizers": ("hessian",)}, "must include 'none'"),
                            ({"optimizees": ("mlp_sigmoid", "resnet")}, "accepted: mlp_sigmoid, "
                             "mlp_relu, mlp_deep, conv, mlp_sigmoid@other"),
                            ({"optimizees": ("mlp_relu",)}, "must include 'mlp_sigmoid'"),
                            ({"optimizees": ("mlp_sigmoid", "mlp_sigmoid@other")},
                             "give other_dataset")):
      with self.assertRaisesRegex(ValueError, message):
        study.StudyConfig(**kwargs)

  def test_default_optimizees_take_the_other_dataset_only_when_given(self):
    every = (study.SEEN,) + study.UNSEEN
    self.assertEqual(study.StudyConfig(preset="cpu").optimizees, every)
    self.assertEqual(study.StudyConfig(preset="cpu", other_dataset="digits").optimizees,
                     every + (study.OTHER_DATA,))


class MatchedLossTest(parameterized.TestCase):
  """Flatness at matched loss from a run's kept parameters equals a replay of the run."""

  @parameterized.parameters("adam", "l2o_dm")
  def test_snapshot_equals_replay(self, name):
    import jax  # pylint: disable=g-import-not-at-top
    from flatl2o import evaluation, optimizers, tasks  # pylint: disable=g-import-not-at-top
    s = study.PRESETS["smoke"]
    task = tasks.get("mlp_sigmoid", "digits")
    if name == "adam":
      tx = optimizers.get("adam")
    else:
      lopt = optimizers.L2ODM(output_scale=0.01)
      tx = evaluation.Learned(lopt, lopt.init(jax.random.key(0)))
    measure = study.flatness_fn(s)
    snapshots = {}
    run = study.run_test(task, tx, s, 1000, s.test_horizon, measure, snapshots)
    self.assertEqual(sorted(snapshots),
                     list(range(s.eval_every, s.test_horizon + 1, s.eval_every)))
    level = run["train_loss_curve"][1] + 1e-6  # reached first at the first evaluation
    kept = study.matched_run(task, tx, s, run, level, measure, snapshots)
    replayed = study.matched_run(task, tx, s, run, level, measure)
    self.assertEqual(kept["step"], s.eval_every)
    self.assertEqual(replayed["step"], s.eval_every)
    for key in ("train_loss", "hessian_trace", "top_eigenvalue"):
      self.assertAlmostEqual(kept[key], replayed[key], places=5, msg=key)
    self.assertNotAlmostEqual(kept["hessian_trace"], run["hessian_trace"], places=5)
    never = study.matched_run(task, tx, s, run, -1.0, measure, snapshots)
    self.assertEqual(never, {"test_seed": 1000, "step": None})


class MetaTrainCommandTest(parameterized.TestCase):

  @parameterized.parameters(("l2o_dm", "hessian", 30.0), ("l2o_scale", "none", None),
                            ("l2o_dm_enhanced", "entropy", 3.0))
  def test_the_command_gives_the_cells_configuration(self, model, kind, coefficient):
    from absl import flags  # pylint: disable=g-import-not-at-top
    from experiments import _config_flags  # pylint: disable=g-import-not-at-top
    from flatl2o import meta  # pylint: disable=g-import-not-at-top
    config = study.StudyConfig(preset="cpu", dataset="idx:/data/mnist")
    command = study.meta_train_command(config, model, kind, coefficient, 1)
    prefix = ("python -m experiments.meta_train --optimizer="
              f"{'l2o_dm' if model == 'l2o_dm_enhanced' else model} --task=mlp_sigmoid "
              "--dataset=idx:/data/mnist ")
    self.assertTrue(command.startswith(prefix), command)
    argv = ["prog", *command[len(prefix):].split()]
    values = flags.FlagValues()
    made = _config_flags.define(meta.MetaTrainConfig, renames=_config_flags.META_TRAIN_RENAMES,
                                flag_values=values, argv=argv)
    values(argv)
    parsed, _ = _config_flags.build(made, values)
    self.assertEqual(parsed, study.meta_config(model, kind, coefficient, 1, study.PRESETS["cpu"]))
    if kind != "none":
      self.assertIn(f"--regularizer={kind}", command)
    # Another kind's field would be refused by the binary (`--alpha belongs to ...hessian`).
    for flag in {"none": ("--alpha", "--beta"), "hessian": ("--beta",),
                 "entropy": ("--alpha",)}[kind]:
      self.assertNotIn(f"{flag}=", command)


class RunDirectoryIdentityTest(absltest.TestCase):

  def test_same_configuration_continues_another_is_refused(self):
    run_dir = self.create_tempdir().full_path
    study.Cells(run_dir, study.StudyConfig(preset="smoke"))
    study.Cells(run_dir, study.StudyConfig(preset="smoke"))  # the same: accepted
    with open(os.path.join(run_dir, "protocol.json")) as f:
      written = f.read()
    with self.assertRaisesRegex(ValueError, r"another configuration \(differs in [a-z_, ]*\bpreset, "
                                r"settings\); pass another --run_dir"):
      study.Cells(run_dir, study.StudyConfig(preset="cpu"))
    with open(os.path.join(run_dir, "protocol.json")) as f:
      self.assertEqual(f.read(), written)

  def test_a_folder_of_something_else_is_refused_and_left_alone(self):
    run_dir = self.create_tempdir()
    run_dir.create_file("notes.txt", content="mine")
    with self.assertRaisesRegex(ValueError, "is not empty and holds no readable protocol.json; "
                                "pass an empty or new --run_dir"):
      study.Cells(run_dir.full_path, study.StudyConfig(preset="smoke"))
    self.assertEqual(os.listdir(run_dir.full_path), ["notes.txt"])

  def test_an_older_run_listing_the_other_dataset_without_one_continues(self):
    run_dir = self.create_tempdir().full_path
    identity = study.StudyConfig(preset="smoke").identity()
    identity["optimizees"] = list(identity["optimizees"]) + [study.OTHER_DATA]
    with open(os.path.join(run_dir, "protocol.json"), "w") as f:
      json.dump(identity, f)
    with open(os.path.join(run_dir, "protocol.json")) as f:
      written = f.read()
    study.Cells(run_dir, study.StudyConfig(preset="smoke"))  # accepted: read as upgraded
    with open(os.path.join(run_dir, "protocol.json")) as f:
      self.assertEqual(f.read(), written)  # and left as it was
    self.assertNotIn(study.OTHER_DATA, study.upgrade_identity(json.loads(written))["optimizees"])
    # The upgraded identity is still compared: another configuration is refused.
    with self.assertRaisesRegex(ValueError, r"\(differs in models\)"):
      study.Cells(run_dir, study.StudyConfig(preset="smoke", models=("l2o_dm",)))
    # With another dataset given, the listed optimizee is what was asked for: still refused,
    # since the folder has no other dataset.
    with self.assertRaisesRegex(ValueError, r"\(differs in optimizees, other_dataset\)"):
      study.Cells(run_dir, study.StudyConfig(preset="smoke", other_dataset="digits"))

  def test_a_field_an_older_run_lacks_counts_as_its_default(self):
    run_dir = self.create_tempdir().full_path
    identity = study.StudyConfig(preset="smoke").identity()
    del identity["optimizees"]
    with open(os.path.join(run_dir, "protocol.json"), "w") as f:
      json.dump(identity, f)
    study.Cells(run_dir, study.StudyConfig(preset="smoke"))
    with self.assertRaisesRegex(ValueError, "differs in optimizees"):
      study.Cells(run_dir, study.StudyConfig(preset="smoke", optimizees=("mlp_sigmoid",)))


def _tiny_results(preset):
  """A hand-made study result: Adam on the seen optimizee, two test seeds."""
  cells = [{"contender": "adam", "optimizee": study.SEEN, "model": "adam", "regularizer": None,
            "coefficient": None, "meta_seed": None, "learning_rate": 0.01, "test_seed": seed,
            "train_loss": 0.5, "test_accuracy": 0.8 + 0.01 * seed, "hessian_trace": 1.0,
            "top_eigenvalue": 0.5, "collapsed": False, "eval_steps": [0, 10, 20],
            "train_loss_curve": [2.3, 1.0, 0.5],
            "matched": {"step": 10, "train_loss": 1.0, "hessian_trace": 1.0 + seed,
                        "top_eigenvalue": 0.5, "entropy_gap": 0.1, "test_loss": 1.2,
                        "generalization_gap": 0.2 + 0.1 * seed}}
           for seed in (0, 1)]
  sweep = [{"regularizer": kind, "coefficient": c, "validation_accuracy": 0.9,
            "validation_accuracies": [0.9, 0.9], "collapsed": c > 10, "collapsed_runs":
            2 * (c > 10), "runs": 2, "grad_ratio": 0.01 * c, "selected_meta_steps": [50, 50],
            "cells": []} for kind in ("hessian", "entropy") for c in (1.0, 10.0, 100.0)]
  return {"config": {"preset": preset}, "coefficients": {}, "meta_training": {},
          "tuning": {}, "contenders": {"adam": {"model": "adam", "regularizer": None,
                                                "coefficient": None, "meta_seed": None}},
          "same_budget": {}, "cells": cells, "matched_levels": {study.SEEN: 1.0},
          "test_seeds": [0, 1], "sweep": sweep, "primary": [],
          "correlations": study.correlations({"cells": cells})}


class SmokeBannerTest(parameterized.TestCase):

  @parameterized.parameters(("smoke", True), ("cpu", False))
  def test_results_md_and_figures_of_a_smoke_run_say_so_first(self, preset, marked):
    """Catches: a smoke run's outputs that read as results."""
    from matplotlib import figure  # pylint: disable=g-import-not-at-top
    results = _tiny_results(preset)
    out = self.create_tempdir().full_path
    titles = []
    save = figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
      titles.append(fig._suptitle.get_text() if fig._suptitle else "")  # pylint: disable=protected-access
      return save(fig, *args, **kwargs)

    with mock.patch.object(figure.Figure, "savefig", savefig):
      table = study.write_outputs(results, out)
    with open(os.path.join(out, "results.md")) as f:
      first = f.readline()
    self.assertEqual(first.startswith("**SMOKE RUN (--preset=smoke): its numbers mean nothing"),
                     marked)
    self.assertEqual(study.markdown(results, table).startswith("**SMOKE RUN"), marked)
    self.assertLen(titles, 5)  # curves, accuracy, trace, sweep, flatness vs gap
    for title in titles:
      self.assertEqual("SMOKE RUN" in title, marked, title)


class DefaultRunDirTest(absltest.TestCase):

  def test_each_preset_has_its_own_default_folder(self):
    """Catches: presets sharing runs/reproduce (the smoke run then blocks the real one)."""
    cwd = self.create_tempdir()
    cwd.create_file(os.path.join("runs", "reproduce-smoke", "notes.txt"), content="mine")
    proc = run_binary("experiments.reproduce", "--preset=smoke", cwd=cwd.full_path)
    self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
    self.assertIn("runs/reproduce-smoke", proc.stderr)  # refused: the folder is not a study's
    self.assertEqual(os.listdir(cwd.full_path), ["runs"])
    self.assertEqual(os.listdir(os.path.join(cwd.full_path, "runs")), ["reproduce-smoke"])


@pytest.mark.slow
class SmokePresetTest(parameterized.TestCase):
  """The smoke preset, every cell, once for the class (about seven minutes on 2 cores)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    cls.other = os.path.join(cls.root, "other")
    os.makedirs(cls.other)
    _write_idx_folder(cls.other)
    cls.run_dir = os.path.join(cls.root, "run")
    cls.args = ["--preset=smoke", f"--other_dataset=idx:{cls.other}", f"--run_dir={cls.run_dir}"]
    cls.proc = run_binary("experiments.reproduce", *cls.args, timeout=1200)
    with open(os.path.join(cls.run_dir, "results.json")) as f:
      cls.results = json.load(f)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def test_every_cell_is_there(self):
    self.assertEqual(self.proc.returncode, 0, self.proc.stderr[-3000:])
    s = study.PRESETS["smoke"]
    got = {(c["model"], c["regularizer"], c["meta_seed"], c["optimizee"], c["test_seed"])
           for c in self.results["cells"] if not self.results["contenders"][c["contender"]]
           .get("control")}
    optimizees = s.optimizees
    tests = [study.TEST_SEED_BASE + i for i in range(s.test_seeds)]
    want = {(m, r, seed, o, t) for m in s.models for r in study.REGULARIZERS
            for seed in s.meta_seeds for o in optimizees for t in tests}
    want |= {(b, None, None, o, t) for b in study.BASELINES for o in optimizees for t in tests}
    self.assertEqual(got, want)
    for c in self.results["cells"]:
      for key in ("train_loss", "test_accuracy", "hessian_trace", "top_eigenvalue", "collapsed"):
        self.assertIn(key, c)
      self.assertIn("step", c["matched"])
    self.assertEqual(set(self.results["coefficients"]), {"hessian", "entropy"})

  def test_outputs(self):
    for name in ("results.md", "train_loss_curves.png", "test_accuracy.png",
                 "trace_vs_loss.png", "coefficient_sweep.png"):
      self.assertTrue(os.path.exists(os.path.join(self.run_dir, name)), name)
    with open(os.path.join(self.run_dir, "results.md")) as f:
      text = f.read()
    for optimizee in ("mlp_sigmoid", "mlp_relu", "mlp_deep", "conv", "mlp_sigmoid@other"):
      self.assertIn(f"### {optimizee}", text)
    self.assertIn("## Where the spread comes from", text)
    self.assertIn("| l2o_dm_enhanced + entropy (1) |", text)
    self.assertTrue(text.startswith("**SMOKE RUN"))
    self.assertIn("## Answer", text)
    self.assertIn("## Coefficient sweep", text)
    self.assertIn("| sam |", text)

  def test_every_model_and_term_has_both_controls_at_both_horizons(self):
    """Catches: a smoke run whose meta-trainings never validate, so that the primary family
    (same budget) is empty and its path runs nowhere short of hours."""
    s = study.PRESETS["smoke"]
    self.assertEqual(set(s.models), set(study.MODELS))
    want = {(m, k, control, h) for m in s.models for k in ("hessian", "entropy")
            for control in ("same_budget", "full_budget") for h in s.horizons}
    got = {(e["model"], e["regularizer"], e["control"], e["horizon"])
           for e in self.results["primary"] if e["optimizee"] == study.SEEN
           and e["metric"] == "test_accuracy" and e["meta_seeds"] == len(s.meta_seeds)}
    self.assertEqual(got, want)
    primary = {(e["model"], e["regularizer"]) for e in self.results["primary"]
               if e["family"] == "primary"}
    self.assertEqual(primary, {(m, k) for m in s.models for k in ("hessian", "entropy")})
    self.assertEqual(self.results["unpaired"], {})
    self.assertEqual({(v["model"], v["regularizer"]) for v in self.results["variance"]},
                     {(m, k) for m in s.models for k in study.REGULARIZERS})
    self.assertEqual(set(self.results["model_coefficients"]), set(s.models))
    self.assertEqual({p["model"] for p in self.results["sweep"]}, set(s.models))

  def test_matched_step_is_the_first_evaluation_at_the_level(self):
    levels = self.results["matched_levels"]
    checked = 0
    for c in self.results["cells"]:
      level, step = levels[c["optimizee"]], c["matched"]["step"]
      reached = [t for t, l in zip(c["eval_steps"], c["train_loss_curve"]) if t and l <= level]
      self.assertEqual(step, reached[0] if reached else None)
      if step is not None:  # the replay reproduces the first run's loss at that step
        i = c["eval_steps"].index(step)
        self.assertAlmostEqual(c["matched"]["train_loss"], c["train_loss_curve"][i], places=5)
        checked += 1
    self.assertGreater(checked, 0)

  def test_same_budget_plain_is_selected_within_the_budget(self):
    # one per regularized model x seed that did not collapse (a collapsed one has no budget)
    trained = [c for c in self.results["meta_training"].values()
               if c["regularizer"] != "none" and c["best_meta_step"] >= 0
               and c["meta_seed"] in study.PRESETS["smoke"].meta_seeds
               and self.results["meta_training"][
                   f"{c['model']}-none-s{c['meta_seed']}"]["best_meta_step"] >= 0]
    self.assertLen(self.results["same_budget"], len(trained))
    contenders = self.results["contenders"]
    for reg_name, plain_name in self.results["same_budget"].items():
      reg = self.results["meta_training"][reg_name]
      self.assertLessEqual(contenders[plain_name]["best_meta_step"], reg["best_meta_step"])

  def test_the_primary_figure_is_the_mean_of_per_seed_paired_differences(self):
    """By hand from results.json: mean over meta seeds of the mean over test seeds of
    (regularized - plain) test accuracy, for every comparison listed."""
    cells = self.results["cells"]
    at = {(c["contender"], c["optimizee"], c["test_seed"]): c for c in cells}
    checked = 0
    for e in self.results["primary"]:
      reg_label = f"{e['regularizer']}-{e['coefficient']:g}"
      per_seed = []
      for seed in study.PRESETS["smoke"].meta_seeds:
        name = f"{e['model']}-{reg_label}-s{seed}"
        other = (f"{e['model']}-none-s{seed}" if e["control"] == "full_budget"
                 else self.results["same_budget"].get(name))
        def value(c, e=e):  # the metric after e["horizon"] steps, from the run's curve
          curve = {"test_accuracy": "test_accuracy_curve", "train_loss": "train_loss_curve"}
          return c[curve[e["metric"]]][c["eval_steps"].index(e["horizon"])]
        diffs = [value(at[name, e["optimizee"], t]) - value(at[other, e["optimizee"], t])
                 for t in self.results["test_seeds"]
                 if (name, e["optimizee"], t) in at and (other, e["optimizee"], t) in at]
        if diffs:
          per_seed.append(np.mean(diffs))
      self.assertEqual(e["meta_seeds"], len(per_seed))
      self.assertAlmostEqual(e["difference"], np.mean(per_seed), places=12)
      checked += 1
    self.assertGreater(checked, 0)
    for key in ("model", "regularizer", "coefficient", "optimizee", "difference", "ci95",
                "p_value", "p_holm", "mde", "meta_seeds", "selected_meta_steps", "control"):
      self.assertIn(key, self.results["primary"][0])
    for key in ("regularizer", "coefficient", "validation_accuracy", "collapsed", "grad_ratio"):
      self.assertIn(key, self.results["sweep"][0])

  def test_rerun_continues_and_another_configuration_is_refused(self):
    cells = os.path.join(self.run_dir, "cells")
    victim = os.path.join(cells, "test", "mlp_relu", "adam.json")
    os.remove(victim)
    before = {p: os.path.getmtime(os.path.join(cells, p + ".json"))
              for p in study.cell_names(self.run_dir)}
    proc = run_binary("experiments.reproduce", *self.args, timeout=1200)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertTrue(os.path.exists(victim))
    for p, mtime in before.items():
      if not p.startswith("matched/"):  # matched cells are rewritten only if the level moved
        self.assertEqual(os.path.getmtime(os.path.join(cells, p + ".json")), mtime, p)
    self.assertNotRegex(proc.stderr, r"meta-training \S+ \(up to")  # nothing retrained
    cells = len(study.PRESETS["smoke"].models) * len(study.REGULARIZERS) * len(
        study.PRESETS["smoke"].meta_seeds)
    self.assertRegex(proc.stderr, rf"continuing: {cells} of {cells} meta-training cells done")
    with open(os.path.join(self.run_dir, "protocol.json")) as f:
      identity = f.read()
    proc = run_binary("experiments.reproduce", *self.args, "--models=l2o_dm")
    self.assertEqual(proc.returncode, 2)
    lines = proc.stderr.strip().splitlines()
    self.assertIn("holds a reproduction of another configuration (differs in models)", lines[-1])
    with open(os.path.join(self.run_dir, "protocol.json")) as f:
      self.assertEqual(f.read(), identity)

  def test_the_library_from_python_gives_the_binarys_results(self):
    # What a notebook runs; every cell is cached by now, so this only reads them back.
    config = study.StudyConfig(preset="smoke", other_dataset=f"idx:{self.other}")
    logged = []
    results = study.run(config, self.run_dir, log=logged.append)
    self.assertFalse([line for line in logged if "(up to" in line], logged)
    with open(os.path.join(self.run_dir, "results.json")) as f:
      written = json.load(f)
    for key in ("table", "command"):  # the binary's own; the accounting is the library's,
      del written[key]                # and a rerun that computes nothing leaves it as it was
    self.assertEqual(json.dumps(json.loads(json.dumps(results)), sort_keys=True),
                     json.dumps(written, sort_keys=True))
    out = self.create_tempdir().full_path
    table = study.write_outputs(results, out)
    self.assertEqual(set(table), set(study.PRESETS["smoke"].optimizees))
    self.assertTrue(os.path.exists(os.path.join(out, "results.md")))


class BadFlagsTest(parameterized.TestCase):

  @parameterized.parameters(
      (["--preset=fast"], "--preset"),
      (["--models=l2o_dm,lstm"], "unknown or repeated models ['lstm']; accepted: l2o_dm"),
      (["--regularizers=none,sam"], "accepted: none, hessian, entropy"),
      (["--dataset=nope"], "nope"),
      (["--meta_seeds=0"], "a comparison needs at least 2 distinct non-negative meta-training"),
      (["--meta_seeds=0,x"], "--meta_seeds must be integers"),
      (["--sweep_file=/nonexistent/results.json"], "no sweep at /nonexistent/results.json"),
      (["--optimizees=mlp_sigmoid,resnet"], "accepted: mlp_sigmoid, mlp_relu"),
      (["--horizons=0,400"], "horizons [0, 400]: each a distinct positive multiple of "
                             "eval_every (50)"),
      (["--horizons=200,x"], "--horizons must be integers, e.g. 200,1000"),
      (["--models=l2o_dm,rnnprop"], "has no coefficients for rnnprop (it covers l2o_dm): "
                                    "sweep them with `python -m experiments.reproduce "
                                    "--preset=sweep --models=rnnprop`"),
  )
  def test_one_line_exit_2_nothing_written(self, args, message):
    out = os.path.join(self.create_tempdir().full_path, "out")
    proc = run_binary("experiments.reproduce", *args, f"--run_dir={out}")
    self.assertEqual(proc.returncode, 2, proc.stderr)
    self.assertIn(message, proc.stderr)
    self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
  absltest.main()
