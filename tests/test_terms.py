"""Flatness terms as plug-ins (`flatl2o.meta.terms`): the registry, the built-ins' values on
a quadratic with known curvature, a user's gradient-norm term through the objective, and the
same term in one file outside the package, meta-trained from Python and from the binary
(`--import`), exported, and reloaded in a fresh process."""

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import textwrap

from absl.testing import absltest, parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

import flatl2o
from flatl2o import checkpoints, meta, optimizers, tasks
from flatl2o.meta import inner, objective, terms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The user's file: what a researcher writes to try a term of their own (nothing else).
USER_TERMS = textwrap.dedent('''
    import dataclasses
    import jax
    import optax
    import flatl2o


    @flatl2o.meta.terms.register("grad_norm")
    @dataclasses.dataclass(frozen=True)
    class GradNorm:
      """coefficient * ||grad L(x_t)||^2 at the inner iterates."""
      coefficient: float = 0.1

      def __post_init__(self):
        if not self.coefficient > 0:
          raise ValueError(f"coefficient must be positive, got {self.coefficient!r}")

      def __call__(self, loss_fn, params, key):
        return self.coefficient * optax.tree_utils.tree_l2_norm(jax.grad(loss_fn)(params)) ** 2
''')

TINY = ("--task=mlp_sigmoid", "--dataset=digits", "--num_meta_iterations=20",
        "--validation_every=10", "--num_inner_steps=40", "--unroll_length=20",
        "--validation_horizon=40", "--checkpoint_every=10")


def _quadratic(diagonal):
  """0.5 * sum(d_i x_i^2) on a dict pytree: Hessian diag(d), gradient d * x."""
  d = jnp.asarray(diagonal, jnp.float32)
  return lambda p: 0.5 * jnp.sum(d * p["x"] ** 2)


@terms.register("test_grad_norm")
@dataclasses.dataclass(frozen=True)
class GradNorm:
  coefficient: float = 0.1

  def __call__(self, loss_fn, params, key):
    return self.coefficient * optax.tree_utils.tree_l2_norm(jax.grad(loss_fn)(params)) ** 2


@terms.register("test_constant")
@dataclasses.dataclass(frozen=True)
class Constant:
  """`value` wherever it is on (0 * loss keeps the graph): pins the objective's plumbing."""
  coefficient: float = 1.0
  when: str = "always"

  def __call__(self, loss_fn, params, key):
    return self.coefficient + 0.0 * loss_fn(params)


class RegistryTest(parameterized.TestCase):

  def test_built_ins_come_first(self):
    self.assertEqual(terms.names()[:2], ("hessian", "entropy"))
    self.assertIs(terms.get("hessian"), meta.HessianTerm)
    self.assertEqual(terms.coefficient_field("hessian"), "alpha")
    self.assertEqual(terms.coefficient_field("entropy"), "beta")
    self.assertEqual(terms.coefficient_field("test_grad_norm"), "coefficient")

  def test_a_name_registered_twice_is_refused(self):
    with self.assertRaisesRegex(terms.TermError, "'hessian' is already registered"):
      terms.register("hessian")(GradNorm)
    terms.register("test_grad_norm")(GradNorm)  # the same class again: a re-import, accepted

  @parameterized.parameters("none", "1abc", "a-b", "")
  def test_bad_names(self, name):
    with self.assertRaisesRegex(terms.TermError, "cannot register flatness term name"):
      terms.register(name)

  def test_a_class_that_is_not_a_frozen_dataclass_is_refused(self):
    with self.assertRaisesRegex(terms.TermError, "not a frozen dataclass"):
      terms.register("test_bad")(dataclasses.dataclass(type("Loose", (), {
          "__call__": lambda self, f, p, k: 0.0})))
    self.assertNotIn("test_bad", terms.names())

  def test_unknown_term_lists_the_registered(self):
    with self.assertRaisesRegex(terms.TermError, r"unknown regularizer kind 'nope'; accepted: "
                                r"none, hessian, entropy, .*--import"):
      meta.RegularizerConfig(kind="nope")

  def test_build_parses_command_line_text(self):
    self.assertEqual(terms.build("test_grad_norm", {"coefficient": "0.5"}), GradNorm(0.5))
    self.assertEqual(terms.build("hessian", {"probes": "7", "add_to_inner_loss": "true"}),
                     meta.HessianTerm(probes=7, add_to_inner_loss=True))
    with self.assertRaisesRegex(terms.TermError, "has no field 'nope'; accepted: coefficient"):
      terms.build("test_grad_norm", {"nope": "1"})
    with self.assertRaisesRegex(terms.TermError, "takes a float, got 'abc'"):
      terms.build("test_grad_norm", {"coefficient": "abc"})
    with self.assertRaisesRegex(ValueError, "alpha must be a positive"):
      terms.build("hessian", {"alpha": "-1"})

  def test_the_flat_record_round_trips_every_term(self):
    for term in (GradNorm(0.5), Constant(2.0, when="first_half"), meta.HessianTerm(alpha=0.3),
                 meta.EntropyTerm(beta=0.2, when="second_half")):
      record = meta.RegularizerConfig.of(term)
      self.assertEqual(record.term(), term)
      self.assertEqual(meta.MetaTrainConfig(regularizer=term).unroll_config().regularizer, term)
    self.assertEqual(meta.RegularizerConfig.of(GradNorm(0.5)).term_fields, (("coefficient", 0.5),))
    self.assertEqual(meta.RegularizerConfig.of(Constant(2.0, when="first_half")).when,
                     "first_half")

  def test_a_schedule_needs_a_term_with_that_field(self):
    with self.assertRaisesRegex(terms.TermError, "has no field 'when'"):
      meta.RegularizerConfig(kind="test_grad_norm", when="first_half")
    with self.assertRaisesRegex(ValueError, "term_fields are the settings of a registered term"):
      meta.RegularizerConfig(kind="hessian", term_fields=(("alpha", 1.0),))


class KnownValuesTest(parameterized.TestCase):
  """Each term's value on 0.5 x^T diag(d) x, where the answers are closed forms."""

  DIAGONAL = (1.0, 2.0, 3.0, 10.0)
  X = {"x": jnp.asarray([1.0, -2.0, 0.5, 0.1])}

  def test_hessian_trace_per_coordinate(self):
    # Rademacher probes give z^T diag(d) z = sum(d) exactly: alpha * mean(d).
    value = meta.HessianTerm(alpha=2.0)(_quadratic(self.DIAGONAL), self.X, jax.random.key(0))
    self.assertAlmostEqual(float(value), 2.0 * np.mean(self.DIAGONAL), places=5)

  @parameterized.parameters("eigenvalue", "lanczos")
  def test_hessian_top_eigenvalue(self, estimator):
    value = meta.HessianTerm(alpha=0.5, estimator=estimator, power_iters=30)(
        _quadratic(self.DIAGONAL), self.X, jax.random.key(0))
    self.assertAlmostEqual(float(value), 0.5 * max(self.DIAGONAL), places=3)

  def test_entropy_matches_its_two_parts(self):
    term = meta.EntropyTerm(beta=0.3, gamma=2.0)
    loss_fn, key = _quadratic(self.DIAGONAL), jax.random.key(3)
    mu = flatl2o.flatness.langevin_mean(loss_fn, self.X, key, gamma=2.0, num_chains=4,
                                        num_steps=5, step_size=0.1, noise=0.01)
    expected = 0.3 * 0.5 * 2.0 * float(jnp.sum((self.X["x"] - mu["x"]) ** 2))
    self.assertAlmostEqual(float(term(loss_fn, self.X, key)), expected, places=6)

  def test_a_user_term_through_the_objective(self):
    # ||grad||^2 = sum(d_i^2 x_i^2)
    expected = 0.5 * sum(d * d * x * x for d, x in zip(self.DIAGONAL, [1.0, -2.0, 0.5, 0.1]))
    value = objective.term(meta.RegularizerConfig.of(GradNorm(0.5)), _quadratic(self.DIAGONAL),
                           self.X, jax.random.key(0))
    self.assertAlmostEqual(float(value), expected, places=4)


class UnrollTest(absltest.TestCase):
  """A user's term in the meta-loss: mean inner loss + mean weighted term over the unroll."""

  def _unroll(self, term):
    lopt = optimizers.learned("l2o_dm")
    task = tasks.get("quadratic", batch_size=4)
    config = meta.MetaTrainConfig(unroll_length=4, num_inner_steps=8, meta_batch_size=2,
                                  regularizer=term)
    meta_params = lopt.init(jax.random.key(0))
    state = inner.init_inner(lopt, task, meta_params, jax.random.split(jax.random.key(1), 2),
                             config)
    return inner.unroll(lopt, task, config, meta_params, state, jax.random.key(2)), config

  def test_the_term_is_added_at_every_iterate(self):
    (meta_loss, (_, traces)), _ = self._unroll(Constant(0.25))
    np.testing.assert_allclose(traces["regularizer"], 0.25)
    self.assertAlmostEqual(float(meta_loss), float(jnp.mean(traces["losses"])) + 0.25, places=5)

  def test_when_switches_it_off_in_the_other_half(self):
    (meta_loss, (state, traces)), _ = self._unroll(Constant(0.25, when="second_half"))
    np.testing.assert_allclose(traces["regularizer"], 0.0)  # steps 0-3 of 8: the first half
    self.assertAlmostEqual(float(meta_loss), float(jnp.mean(traces["losses"])), places=5)


def _write_user_module(folder):
  with open(os.path.join(folder, "my_terms.py"), "w") as f:
    f.write(USER_TERMS)


def _run(folder, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)  # ROOT: tests.user_lopt too
  return subprocess.run([sys.executable, *args], cwd=folder, env=env, capture_output=True,
                        text=True, timeout=600, check=False)


class UserFileTest(absltest.TestCase):
  """The issue's acceptance: a gradient-norm term in one user file, no file of the package
  touched, meta-trained from Python and from `experiments.meta_train --import`."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.folder = tempfile.mkdtemp(prefix="user_terms", dir=absltest.get_default_test_tmpdir())
    _write_user_module(cls.folder)
    cls.binary_run = os.path.join(cls.folder, "binary_run")
    cls.proc = _run(cls.folder, "-m", "experiments.meta_train", "--import=my_terms",
                    "--regularizer=grad_norm", "--config.regularizer.coefficient=0.5",
                    f"--run_dir={cls.binary_run}", *TINY)

  def test_the_binary_meta_trains_exports_and_names_the_term(self):
    self.assertEqual(self.proc.returncode, 0, self.proc.stderr[-3000:])
    export = os.path.join(self.binary_run, "optimizer")
    self.assertEqual(checkpoints.metadata(export)["flatness_term"],
                     {"name": "grad_norm", "module": "my_terms", "fields": {"coefficient": 0.5}})
    with open(os.path.join(self.binary_run, "run.json")) as f:
      regularizer = json.load(f)["config"]["regularizer"]
    self.assertEqual((regularizer["kind"], regularizer["term_fields"]),
                     ("grad_norm", [["coefficient", 0.5]]))
    # A fresh process that imports the module reloads the export and finds its term.
    check = _run(self.folder, "-c", textwrap.dedent(f"""
        import my_terms, flatl2o
        from flatl2o import checkpoints
        from flatl2o.meta import terms
        named = checkpoints.metadata({export!r})["flatness_term"]
        term = terms.build(named["name"], named["fields"])
        assert isinstance(term, my_terms.GradNorm) and term.coefficient == 0.5, term
        tx = flatl2o.load_optimizer({export!r})
        print("reloaded", type(term).__name__, type(tx).__name__)
        """))
    self.assertEqual(check.returncode, 0, check.stderr[-3000:])
    self.assertIn("reloaded GradNorm", check.stdout)

  def test_python_meta_trains_the_same_optimizer(self):
    self.assertEqual(self.proc.returncode, 0, self.proc.stderr[-3000:])
    sys.path.insert(0, self.folder)
    try:
      import my_terms  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    finally:
      sys.path.remove(self.folder)
    flags = dict(arg[2:].split("=", 1) for arg in TINY)
    config = meta.MetaTrainConfig(
        regularizer=my_terms.GradNorm(0.5),
        **{k: int(v) for k, v in flags.items() if k not in ("task", "dataset")})
    run_dir = os.path.join(self.folder, "python_run")
    meta.meta_train(optimizers.learned("l2o_dm"),
                    tasks.get("mlp_sigmoid", "digits", batch_size=128), config, run_dir=run_dir)
    # The same command from Python and from the binary: the same meta-parameters, bit for bit.
    for name in ("meta_params.npz", "optimizer.json"):
      with open(os.path.join(run_dir, "optimizer", name), "rb") as a, open(
          os.path.join(self.binary_run, "optimizer", name), "rb") as b:
        self.assertEqual(a.read(), b.read(), name)

  def test_bad_input_is_one_line(self):
    cases = (
        (("--config.regularizer.coefficient=-1",), "coefficient must be positive"),
        (("--config.regularizer.nope=1",), "has no field 'nope'; accepted: coefficient"),
        (("--config.regularizer.coefficient=abc",), "takes a float, got 'abc'"),
        (("--regularize_when=first_half",), "has no field 'when'"),
        (("--alpha=0.1",), "--alpha belongs to --regularizer=hessian"),
    )
    for extra, message in cases:
      proc = _run(self.folder, "-m", "experiments.meta_train", "--import=my_terms",
                  "--regularizer=grad_norm", f"--run_dir={self.folder}/bad", *TINY, *extra)
      self.assertEqual(proc.returncode, 2, (extra, proc.stderr[-2000:]))
      self.assertLen(proc.stderr.strip().splitlines(), 1, proc.stderr)
      self.assertIn(message, proc.stderr)
    self.assertFalse(os.path.exists(f"{self.folder}/bad"))

  def test_import_brings_a_users_optimizer_and_task_to_every_binary(self):
    with open(os.path.join(self.folder, "my_task.py"), "w") as f:
      f.write(textwrap.dedent("""
          import flatl2o

          def tiny(dataset, batch_size):
            model = flatl2o.tasks.MLP(hidden_sizes=(4,), num_classes=dataset.num_classes)
            return flatl2o.tasks.ClassificationTask(data=dataset, model=model, name="tiny",
                                                    batch_size=batch_size)

          flatl2o.tasks.register("tiny", tiny)
          """))
    run_dir = os.path.join(self.folder, "user_lopt_run")
    proc = _run(self.folder, "-m", "experiments.meta_train", "--import=tests.user_lopt,my_task",
                "--optimizer=user_momentum", "--task=tiny", f"--run_dir={run_dir}", *TINY[1:])
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    out = os.path.join(self.folder, "eval")
    proc = _run(self.folder, "-m", "experiments.evaluate", "--import=tests.user_lopt,my_task",
                f"--optimizer={run_dir}/optimizer", "--task=tiny", "--num_steps=20",
                "--eval_every=10", "--seeds=0", f"--out_dir={out}")
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertTrue(os.path.exists(os.path.join(out, "summary.json")))
    # Without the module the task is unknown: one line naming the built-ins.
    proc = _run(self.folder, "-m", "experiments.evaluate", "--task=tiny", f"--out_dir={out}2")
    self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
    self.assertIn("unknown --task=tiny; accepted: mlp_sigmoid", proc.stderr)

  def test_a_module_that_registers_a_built_in_name_is_refused(self):
    with open(os.path.join(self.folder, "clash.py"), "w") as f:
      f.write(USER_TERMS.replace('"grad_norm"', '"hessian"'))
    proc = _run(self.folder, "-m", "experiments.meta_train", "--import=clash",
                f"--run_dir={self.folder}/clash_run", *TINY)
    self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
    self.assertLen(proc.stderr.strip().splitlines(), 1, proc.stderr)
    self.assertIn("--import=clash failed: TermError: flatness term 'hessian' is already "
                  "registered", proc.stderr)
    self.assertFalse(os.path.exists(f"{self.folder}/clash_run"))


if __name__ == "__main__":
  absltest.main()
