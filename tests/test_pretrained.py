"""The pretrained optimizers shipped as package data: load, cards, training, add, binaries."""

import configparser
import fnmatch
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import absltest, parameterized

import flatl2o
from flatl2o import checkpoints, evaluation, optimizers, pretrained, tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_FOLDER = os.path.join(ROOT, "flatl2o", "pretrained")
NAMES = ("l2o_dm", "l2o_dm_entropy", "l2o_dm_hessian", "mlp_lopt", "rnnprop")
EXPECTED = {  # name -> (architecture, regularizer kind)
    "l2o_dm": ("l2o_dm", "none"), "l2o_dm_entropy": ("l2o_dm", "entropy"),
    "l2o_dm_hessian": ("l2o_dm", "hessian"), "mlp_lopt": ("mlp_lopt", "none"),
    "rnnprop": ("rnnprop", "none")}


def run(args, cwd=ROOT):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300, check=False)


def _params_and_grads():
  params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.array([0.5, -0.25, 0.0])}
  grads = {"w": jnp.sin(jnp.arange(12.0)).reshape(3, 4) * 0.1, "b": jnp.array([1e-3, -2.0, 0.3])}
  return params, grads


def _two_updates(tx):
  """The updates of two steps (the second sees the state the first left)."""
  params, grads = _params_and_grads()
  state = tx.init(params)
  first, state = tx.update(grads, state, params)
  params = optax.apply_updates(params, first)
  second, _ = tx.update(jax.tree.map(lambda g: -0.5 * g, grads), state, params)
  return first, second


class PretrainedTest(parameterized.TestCase):

  def test_names(self):
    self.assertEqual(pretrained.names(), NAMES)
    self.assertIs(flatl2o.pretrained, pretrained)

  @parameterized.parameters(*NAMES)
  def test_load_matches_the_export_in_its_folder(self, name):
    tx = pretrained.load(name)
    self.assertIsInstance(tx, optax.GradientTransformation)
    got = _two_updates(tx)
    # The folder named `name` in the package, read by the export format's loader.
    expected = _two_updates(flatl2o.load_optimizer(os.path.join(PACKAGE_FOLDER, name)))
    chex.assert_trees_all_equal(got, expected)
    chex.assert_tree_all_finite(got)
    self.assertGreater(float(jnp.abs(got[0]["w"]).sum()), 0.0)
    self.assertEqual(pretrained.path(name), os.path.join(PACKAGE_FOLDER, name))
    lopt, _ = pretrained.load_learned(name)
    self.assertEqual(lopt.name, EXPECTED[name][0])

  def test_the_optimizers_differ(self):
    updates = {n: _two_updates(pretrained.load(n))[0]["w"] for n in NAMES}
    for i, a in enumerate(NAMES):
      for b in NAMES[i + 1:]:
        self.assertFalse(np.array_equal(updates[a], updates[b]), f"{a} and {b} update alike")

  @parameterized.parameters(*NAMES)
  def test_card_is_complete_and_matches_the_export(self, name):
    card = pretrained.card(name)
    for field in pretrained.CARD_FIELDS:
      self.assertIn(field, card)
    for field in pretrained.TRAINING_FIELDS:
      self.assertIn(field, card["training"])
    with open(os.path.join(PACKAGE_FOLDER, name, "optimizer.json")) as f:
      description = json.load(f)
    architecture, kind = EXPECTED[name]
    self.assertEqual(card["name"], name)
    self.assertEqual(card["architecture"], architecture)
    self.assertEqual(description["architecture"], architecture)
    self.assertEqual(card["hparams"], description["hparams"])
    self.assertEqual(card["export_sha256"], description["sha256"])
    training = card["training"]
    self.assertEqual((training["task"], training["dataset"]), ("mlp_sigmoid", "digits"))
    self.assertEqual(card["regularizer"]["kind"], kind)
    self.assertEqual(training["meta_train_config"]["regularizer"]["kind"], kind)
    self.assertEqual(training["meta_seed"], training["meta_train_config"]["seed"])
    self.assertIn(f"--optimizer={architecture}", training["command"])
    self.assertIn(f"--regularizer={kind}" if kind != "none" else "meta_train", training["command"])
    self.assertBetween(training["validation_accuracy"], 0.5, 1.0)
    self.assertBetween(training["selected_meta_step"], 1,
                       training["meta_train_config"]["num_meta_iterations"])
    self.assertNotEmpty(card["measured"])
    # The first measurement is the paired difference to tuned Adam on the default study's
    # three optimizees, with the commands that give it; card.md opens with it.
    versus = card["measured"][0]
    self.assertEqual(versus["kind"], "versus_adam")
    self.assertLen(versus["commands"], 3)
    for command in versus["commands"]:
      self.assertRegex(command, rf"--optimizer=adam,pretrained:{name} --learning_rate=")
    self.assertEqual(sorted(versus["results"]), [f"pretrained {name} on {t}" for t in
                                                 ("mlp_deep", "mlp_relu", "mlp_sigmoid")])
    for row in versus["results"].values():
      d = row["test accuracy − tuned Adam"]
      self.assertBetween(d["p"], 0.0, 1.0)
      self.assertGreaterEqual(d["p_holm"], d["p"])
    self.assertIn("**Against tuned Adam", pretrained.render_card(card).split("\n\n")[2])
    for entry in card["measured"]:
      self.assertNotEmpty(entry["commands"])
      self.assertTrue(any(label.startswith(f"pretrained {name}") for label in entry["results"]))
    with open(os.path.join(PACKAGE_FOLDER, name, "card.md")) as f:
      self.assertEqual(f.read(), pretrained.render_card(card))  # card.md is up to date

  def test_every_file_is_package_data(self):
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    patterns = [p.strip() for p in
                config["options.package_data"]["flatl2o.pretrained"].split(",")]
    for name in NAMES:
      files = sorted(os.listdir(os.path.join(PACKAGE_FOLDER, name)))
      self.assertEqual(files, sorted(pretrained.FILES))
      for filename in files:
        self.assertTrue(any(fnmatch.fnmatch(f"{name}/{filename}", p) for p in patterns),
                        f"{name}/{filename} is not matched by setup.cfg's package_data")

  def test_unknown_name_is_one_line_naming_them(self):
    with self.assertRaises(pretrained.PretrainedError) as caught:
      pretrained.load("l2o_dn")
    message = str(caught.exception)
    self.assertIsInstance(caught.exception, ValueError)
    self.assertNotIn("\n", message)
    self.assertIn("unknown pretrained optimizer 'l2o_dn' (did you mean 'l2o_dm'?); accepted: "
                  + ", ".join(NAMES), message)
    for call in (pretrained.card, pretrained.path):
      with self.assertRaisesRegex(pretrained.PretrainedError, "accepted: l2o_dm,"):
        call("adam")


class PretrainedTrainsTest(parameterized.TestCase):
  """Each one trains a fresh digits MLP about as well as Adam at its default."""

  SEED = 1000
  NUM_STEPS = 500

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.task = tasks.get("mlp_sigmoid", "digits")
    cls.adam = cls._accuracy(optimizers.get("adam", learning_rate=0.01))

  @classmethod
  def _accuracy(cls, tx):
    result = evaluation.train(cls.task, tx, cls.NUM_STEPS, jax.random.key(cls.SEED),
                              eval_every=cls.NUM_STEPS, eval_splits=("test",))
    return result.final("test")["accuracy"]

  @parameterized.parameters(*NAMES)
  def test_test_accuracy_within_003_of_adam(self, name):
    accuracy = self._accuracy(pretrained.load(name))
    self.assertGreaterEqual(accuracy, self.adam - 0.03, f"{name}: {accuracy} vs Adam {self.adam}")


class AddTest(absltest.TestCase):

  def _card(self, summary="A copy for the test."):
    card = dict(pretrained.card("l2o_dm"))
    del card["name"]
    return {**card, "summary": summary}

  def test_round_trip_and_no_overwrite(self):
    root = self.create_tempdir().full_path
    source = pretrained.path("l2o_dm")
    target = pretrained.add("copy", source, self._card(), root=root)
    self.assertEqual(target, os.path.join(root, "copy"))
    self.assertEqual(pretrained.names(root), ("copy",))
    self.assertEqual(sorted(os.listdir(root)), ["copy"])  # no temporary left
    chex.assert_trees_all_equal(_two_updates(pretrained.load("copy", root=root)),
                                _two_updates(pretrained.load("l2o_dm")))
    card = pretrained.card("copy", root=root)
    self.assertEqual(card, {**self._card(), "name": "copy"})
    with open(os.path.join(target, "card.md")) as f:
      self.assertEqual(f.read(), pretrained.render_card(card))

    before = {f: os.path.getmtime(os.path.join(target, f)) for f in os.listdir(target)}
    with self.assertRaisesRegex(pretrained.PretrainedError, "'copy' already exists"):
      pretrained.add("copy", source, self._card("Another."), root=root)
    self.assertEqual(before, {f: os.path.getmtime(os.path.join(target, f))
                              for f in os.listdir(target)})
    # With overwrite, from the folder being replaced itself (updating the card).
    pretrained.add("copy", target, self._card("Another."), root=root, overwrite=True)
    self.assertEqual(pretrained.card("copy", root=root)["summary"], "Another.")
    self.assertEqual(sorted(os.listdir(root)), ["copy"])
    self.assertEqual(pretrained.load_learned("copy", root=root)[0].name, "l2o_dm")

  def test_bad_cards_and_names_write_nothing(self):
    root = self.create_tempdir().full_path
    source = pretrained.path("l2o_dm")
    training = {k: v for k, v in self._card()["training"].items() if k != "meta_seed"}
    for name, card, message in (
        ("x", {**self._card(), "training": training}, "'training' lacks meta_seed"),
        ("x", {**self._card(), "architecture": "rnnprop"},
         "'architecture' is 'rnnprop' but the export says 'l2o_dm'"),
        ("x", {k: v for k, v in self._card().items() if k != "measured"}, "card lacks measured"),
        ("x", {**self._card(), "regularizer": {"kind": "hessian"}}, "coefficient_name 'alpha'"),
        ("Bad-Name", self._card(), "lower-case letters"),
    ):
      with self.assertRaisesRegex(pretrained.PretrainedError, message):
        pretrained.add(name, source, card, root=root)
    with self.assertRaisesRegex(checkpoints.CheckpointError, "no optimizer.json"):
      pretrained.add("x", root, self._card(), root=root)
    self.assertEmpty(os.listdir(root))

  def test_script(self):
    root = self.create_tempdir().full_path
    card_json = self.create_tempfile("card.json", json.dumps(self._card())).full_path
    args = ["scripts/add_pretrained.py", "--name=copy", f"--export_dir={pretrained.path('l2o_dm')}",
            f"--card_json={card_json}", f"--root={root}"]
    proc = run(args)
    self.assertEqual(proc.returncode, 0, proc.stderr)
    self.assertIn("added pretrained optimizer 'copy'", proc.stdout)
    self.assertEqual(pretrained.names(root), ("copy",))
    for extra, message in (([], "already exists"), ([f"--card_json={root}/none.json"],
                                                    "No such file")):
      proc = run(args + extra)
      self.assertEqual(proc.returncode, 2, proc.stderr)
      lines = proc.stderr.strip().splitlines()
      self.assertLen(lines, 1, proc.stderr)
      self.assertIn(message, lines[0])


class EvaluateBinaryTest(absltest.TestCase):

  @pytest.mark.slow  # the evaluate binary trained end to end
  def test_pretrained_name(self):
    cwd = self.create_tempdir().full_path
    proc = run(["-m", "experiments.evaluate", "--optimizer=pretrained:rnnprop", "--num_steps=20",
                "--eval_every=10", "--seeds=0"], cwd=cwd)
    self.assertEqual(proc.returncode, 0, proc.stderr)
    self.assertIn("pretrained rnnprop", proc.stdout)
    out = os.path.join(cwd, "runs", "evaluate", "mlp_sigmoid-digits-pretrained-rnnprop")
    with open(os.path.join(out, "summary.json")) as f:
      summary = json.load(f)
    self.assertEqual(summary["label"], "pretrained rnnprop")
    self.assertEqual(summary["identity"]["optimizer_sha256"],
                     pretrained.card("rnnprop")["export_sha256"])

  def test_bad_pretrained_input_exits_2_with_one_line(self):
    for args, message in (
        (["--optimizer=pretrained:nope"],
         "unknown pretrained optimizer 'nope'; accepted: " + ", ".join(NAMES)),
        (["--optimizer=pretrained:l2o_dm", "--learning_rate=0.1"],
         "--learning_rate applies to hand-designed optimizers only"),
        (["--optimizer=l2o_dm_hessian"], "--optimizer=pretrained:l2o_dm_hessian"),
    ):
      out = os.path.join(self.create_tempdir().full_path, "out")
      proc = run(["-m", "experiments.evaluate", *args, "--num_steps=20", "--seeds=0",
                  f"--out_dir={out}"])
      self.assertEqual(proc.returncode, 2, proc.stderr)
      lines = proc.stderr.strip().splitlines()
      self.assertLen(lines, 1, proc.stderr)
      self.assertIn(message, lines[0])
      self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
  absltest.main()
