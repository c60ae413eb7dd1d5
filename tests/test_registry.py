"""The open registries: a user's own learned optimizer and task, registered like the built-ins.

`tests/user_lopt.py` is a learned optimizer defined outside flatl2o; importing
it registers it. It meta-trains, exports, and loads in a fresh process that
imports it, with the same updates; a fresh process that does not import it gets
one line saying how to register it. Every registration here is undone after its
test (the registries are patched), so other test files see the built-ins only.
"""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

import flatl2o
from flatl2o import meta, optimizers, tasks
from flatl2o.optimizers import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_MODULE = "tests.user_lopt"
GRADS = {"w": np.array([[0.3, -0.2], [0.1, 0.0]], np.float32), "b": np.array([0.5], np.float32)}

# Two updates on GRADS from the transformation of `path`, as JSON (the
# transformation's state carries the momentum from the first to the second).
_TWO_UPDATES = """
import json, sys
import numpy as np
import flatl2o
{imports}
grads = {{"w": np.array([[0.3, -0.2], [0.1, 0.0]], np.float32), "b": np.array([0.5], np.float32)}}
try:
  tx = flatl2o.load_optimizer(sys.argv[1])
except flatl2o.checkpoints.CheckpointError as e:
  print(e, file=sys.stderr)
  sys.exit(2)
first, state = tx.update(grads, tx.init(grads), grads)
second, _ = tx.update(grads, state, grads)
print(json.dumps([{{k: np.asarray(v).tolist() for k, v in u.items()}} for u in (first, second)]))
"""


def _two_updates(tx):
  first, state = tx.update(GRADS, tx.init(GRADS), GRADS)
  second, _ = tx.update(GRADS, state, GRADS)
  return [{k: np.asarray(v) for k, v in u.items()} for u in (first, second)]


def _run_fresh(path, imports=""):
  code = textwrap.dedent(_TWO_UPDATES.format(imports=imports))
  return subprocess.run([sys.executable, "-c", code, path], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, check=False,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT))


def _import_user_module():
  """Imports tests/user_lopt.py afresh (it registers itself) and returns it."""
  sys.modules.pop(USER_MODULE, None)
  return __import__(USER_MODULE, fromlist=["UserMomentum"])


class _PatchedRegistries(absltest.TestCase):
  """Each test starts from the built-ins and leaves them as they were."""

  def setUp(self):
    super().setUp()
    self.enter_context(mock.patch.dict(registry.LEARNED))
    self.enter_context(mock.patch.dict(registry._FACTORIES))
    self.enter_context(mock.patch.dict(tasks._REGISTRY))
    self.addCleanup(sys.modules.pop, USER_MODULE, None)


class UserLearnedOptimizerTest(_PatchedRegistries):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # Meta-train and export once, with the module registered only meanwhile.
    with mock.patch.dict(registry.LEARNED):
      user = _import_user_module()
      cls.lopt = optimizers.learned(user.NAME)
      cls.initial = cls.lopt.init(jax.random.key(0))
      config = meta.MetaTrainConfig(num_meta_iterations=2, unroll_length=2, num_inner_steps=4,
                                    meta_batch_size=1, validation_every=2,
                                    validation_horizon=4, validation_seeds=1)
      cls.result = meta.meta_train(cls.lopt, tasks.get("quadratic"), config)
      cls.export = os.path.join(absltest.get_default_test_tmpdir(), "user_momentum_export")
      flatl2o.save_optimizer(cls.export, cls.lopt, cls.result.meta_params)
      cls.in_process = _two_updates(cls.lopt.transform(cls.result.meta_params))
    sys.modules.pop(USER_MODULE, None)

  def test_registered_by_its_module_after_the_built_ins(self):
    self.assertNotIn("user_momentum", optimizers.learned_names())
    user = _import_user_module()
    self.assertEqual(optimizers.learned_names(),
                     ("l2o_dm", "rnnprop", "l2o_scale", "mlp_lopt", "user_momentum"))
    self.assertEqual(optimizers.learned("user_momentum", decay=0.5), user.UserMomentum(decay=0.5))
    self.assertEqual(user.UserMomentum().preferred_meta_loss, "mean")  # the protocol's default
    self.assertIsInstance(user.UserMomentum(), optimizers.LearnedOptimizer)

  def test_meta_training_moved_the_meta_parameters(self):
    self.assertEqual(self.result.num_skipped, 0)
    self.assertEqual(jax.tree.structure(self.result.meta_params),
                     jax.tree.structure(self.initial))
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                         self.result.last_meta_params, self.initial)
    self.assertGreater(max(jax.tree.leaves(moved)), 0.0)

  def test_updates_are_the_formula_of_the_module(self):
    # update_t = -exp(log_lr) (w0 g + w1 m_t), m_1 = g, m_2 = 0.9 g + g.
    p = jax.tree.map(np.asarray, self.result.meta_params)
    lr, (w0, w1) = np.exp(p["log_lr"]), p["w"]
    for update, momentum in zip(self.in_process, (1.0, 1.9)):
      for k, g in GRADS.items():
        np.testing.assert_allclose(update[k], -lr * (w0 + w1 * momentum) * g, rtol=1e-6)
    # A concrete value: the initial meta-parameters of key 0 step 0.05 * ~1 * g.
    first = _two_updates(self.lopt.transform(self.initial))[0]
    np.testing.assert_allclose(first["b"], [-0.025], rtol=0.05)

  def test_export_loads_in_a_fresh_process_that_imports_the_module(self):
    proc = _run_fresh(self.export, imports=f"import {USER_MODULE}")
    self.assertEqual(proc.returncode, 0, proc.stderr)
    loaded = json.loads(proc.stdout)
    for got, want in zip(loaded, self.in_process):
      for k in GRADS:
        np.testing.assert_allclose(np.asarray(got[k], np.float32), want[k], rtol=1e-6, atol=0)

  def test_export_fails_in_a_fresh_process_without_the_module(self):
    proc = _run_fresh(self.export)
    self.assertEqual(proc.returncode, 2, proc.stderr)
    self.assertEqual(proc.stdout, "")
    lines = proc.stderr.strip().splitlines()
    self.assertLen(lines, 1)
    self.assertRegex(
        lines[0], r"optimizer.json holds architecture 'user_momentum' \(written by flatl2o .*\), "
        r"which is not registered \(registered: l2o_dm, rnnprop, l2o_scale, mlp_lopt\); import "
        r"the module that calls flatl2o.optimizers.register\('user_momentum', ...\) first")

  def test_in_process_load_needs_the_registration_too(self):
    with self.assertRaisesRegex(flatl2o.checkpoints.CheckpointError, "is not registered"):
      flatl2o.load_optimizer(self.export)
    _import_user_module()
    lopt, meta_params = flatl2o.checkpoints.load_learned(self.export)
    self.assertEqual(lopt.name, "user_momentum")
    np.testing.assert_array_equal(meta_params["w"], self.result.meta_params["w"])


class RegisterTest(_PatchedRegistries):

  def test_a_name_registered_twice_is_one_line(self):
    user = _import_user_module()
    for name, factory, kind in (("user_momentum", user.UserMomentum, "a learned optimizer"),
                                ("adam", lambda learning_rate=0.1: optax.sgd(learning_rate),
                                 "a hand-designed optimizer"),
                                ("l2o_dm", optimizers.L2ODM, "a learned optimizer")):
      with self.assertRaises(optimizers.OptimizerError) as caught:
        optimizers.register(name, factory)
      self.assertEqual(str(caught.exception),
                       f"optimizer {name!r} is already registered ({kind}); pick another name, "
                       "or pass overwrite=True to replace it")
    self.assertIs(registry.LEARNED["l2o_dm"], optimizers.L2ODM)  # nothing changed

  def test_overwrite_replaces(self):
    optimizers.register("adam", lambda learning_rate=0.5: optax.sgd(learning_rate),
                        overwrite=True)
    self.assertEqual(optimizers.default_hparams("adam"), {"learning_rate": 0.5})

  def test_a_hand_designed_factory(self):
    optimizers.register("user_sgd", lambda learning_rate=0.25: optax.sgd(learning_rate))
    self.assertEqual(optimizers.names()[-1], "user_sgd")
    self.assertNotIn("user_sgd", optimizers.learned_names())
    tx = optimizers.get("user_sgd")
    update, _ = tx.update(GRADS, tx.init(GRADS))
    np.testing.assert_allclose(update["b"], [-0.125])
    with self.assertRaisesRegex(optimizers.OptimizerError, "learning_rate must be a positive"):
      optimizers.get("user_sgd", learning_rate=-1.0)

  def test_as_a_decorator(self):
    @optimizers.register("user_sgd_decorated")
    def user_sgd(learning_rate=0.5):
      return optax.sgd(learning_rate)

    self.assertTrue(callable(user_sgd))  # the decorator returns the factory itself
    tx = optimizers.get("user_sgd_decorated")
    update, _ = tx.update(GRADS, tx.init(GRADS))
    np.testing.assert_allclose(update["b"], [-0.25])
    with self.assertRaisesRegex(optimizers.OptimizerError, "already registered"):
      optimizers.register("user_sgd_decorated")(user_sgd)

  def test_what_does_not_fit_is_one_line(self):
    user = _import_user_module()

    class NotDataclass(optimizers.LearnedOptimizer):
      name, coordinatewise = "nd", True

    class Bare:  # a dataclass below, but without the protocol's members
      name = "bare"

    @dataclasses.dataclass
    class Mutable(optimizers.LearnedOptimizer):
      size: int = 1
      name, coordinatewise = "mutable", True

    cases = (
        ("user momentum", user.UserMomentum, r"^cannot register optimizer name 'user momentum': "
         r"use letters, digits, '_', '.' or '-'$"),
        ("other_name", user.UserMomentum, r"^cannot register learned optimizer 'other_name': "
         r"class UserMomentum has name 'user_momentum'; exports record that name, so register "
         r"it as 'user_momentum' or set name = 'other_name'$"),
        ("nd", NotDataclass, r"class NotDataclass must be a frozen dataclass"),
        ("mutable", Mutable,
         r"class Mutable must be a frozen dataclass"),
        ("bare", dataclasses.dataclass(frozen=True)(Bare),
         r"class Bare lacks coordinatewise, preferred_meta_loss, init, init_state, step, "
         r"transform; subclass flatl2o.optimizers.LearnedOptimizer"),
        ("needs_lr", lambda learning_rate: optax.sgd(learning_rate),
         r"every parameter of its factory needs a default .*; 'learning_rate' has none$"),
        ("number", 3, r"is neither a learned-optimizer class nor a callable"),
    )
    for name, factory, message in cases:
      with self.assertRaisesRegex(optimizers.OptimizerError, message) as caught:
        optimizers.register(name, factory)
      self.assertLen(str(caught.exception).splitlines(), 1)
    self.assertEqual(optimizers.learned_names(),
                     ("l2o_dm", "rnnprop", "l2o_scale", "mlp_lopt", "user_momentum"))


class PreferredMetaLossTest(absltest.TestCase):

  def test_every_architecture_has_one_meta_train_accepts(self):
    preferred = {name: optimizers.learned(name).preferred_meta_loss
                 for name in optimizers.learned_names()}
    for loss in preferred.values():
      meta.MetaTrainConfig(meta_loss=loss)  # raises on an unknown meta-loss
    # The protocol's default, but L2O-Scale's (Wichrowska et al. meta-train with it).
    self.assertEqual({n: l for n, l in preferred.items() if l != "mean"},
                     {"l2o_scale": "log_ratio"})


class TaskRegistryTest(_PatchedRegistries):

  def test_a_user_task_is_built_by_get(self):
    seen = []

    def tiny_mlp(dataset, batch_size):
      seen.append((dataset.name, batch_size))
      model = tasks.MLP(hidden_sizes=(3,), num_classes=dataset.num_classes)
      return tasks.ClassificationTask(data=dataset, model=model, name="tiny_mlp",
                                      batch_size=batch_size)

    self.assertIs(tasks.register("tiny_mlp", tiny_mlp), tiny_mlp)
    self.assertEqual(tasks.names(),
                     ("mlp_sigmoid", "mlp_relu", "mlp_deep", "conv", "quadratic", "tiny_mlp"))
    task = tasks.get("tiny_mlp", batch_size=16)
    self.assertEqual(seen, [("digits", 16)])
    params = task.init(jax.random.key(0))
    self.assertEqual(params["Dense_0"]["kernel"].shape, (64, 3))

  def test_as_a_decorator(self):
    made = tasks.QuadraticTask.create(batch_size=4)

    @tasks.register("decorated_quadratic", uses_data=False)
    def build(batch_size):
      del batch_size
      return made

    self.assertTrue(callable(build))
    self.assertIs(tasks.get("decorated_quadratic"), made)

  def test_a_task_that_makes_its_own_data(self):
    made = tasks.QuadraticTask.create(batch_size=4)
    tasks.register("my_quadratic", lambda batch_size: made, uses_data=False)
    self.assertIs(tasks.get("my_quadratic"), made)
    with self.assertRaisesRegex(tasks.TaskError,
                                "^task 'my_quadratic' makes its own data; pass no dataset$"):
      tasks.get("my_quadratic", dataset="digits")

  def test_a_name_registered_twice_is_one_line(self):
    with self.assertRaises(tasks.TaskError) as caught:
      tasks.register("quadratic", lambda batch_size: None, uses_data=False)
    self.assertEqual(str(caught.exception), "task 'quadratic' is already registered; pick "
                     "another name, or pass overwrite=True to replace it")
    tasks.register("quadratic", lambda batch_size: "replaced", uses_data=False, overwrite=True)
    self.assertEqual(tasks.get("quadratic"), "replaced")
    with self.assertRaisesRegex(tasks.TaskError, "^cannot register task name 'a b'"):
      tasks.register("a b", lambda batch_size: None)


if __name__ == "__main__":
  absltest.main()
