"""Bad flags fail before the heavy imports: the binaries' flags come from light modules.

`flatl2o`, `flatl2o.meta` and `flatl2o.study` import their JAX-using parts on
first use, and the binaries take their names from `flatl2o.builtin_names`, so
`--optimizer=nope` fails without importing JAX (well under 3 s; 13-16 s before
on 2 contended cores).
"""

import json
import os
import subprocess
import sys

from absl.testing import absltest, parameterized

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-X", "importtime", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


def _imported(stderr):
  """Module names from -X importtime lines ('import time: self | cumulative | name')."""
  return {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines()
          if line.startswith("import time:")}


class BuiltinNamesTest(absltest.TestCase):

  def test_the_light_lists_are_the_registries_whole(self):
    """In a fresh process (nothing a test registered): each registry is its built-ins exactly."""
    from flatl2o import builtin_names  # pylint: disable=g-import-not-at-top
    proc = _run("-c", "import json; from flatl2o import optimizers, pretrained, tasks; "
                "from flatl2o.meta import estimators, terms; print(json.dumps({"
                "'learned': optimizers.learned_names(), 'tasks': tasks.names(), "
                "'hand': optimizers.names(), 'pretrained': pretrained.names(), "
                "'terms': terms.names(), 'estimators': estimators.names()}))")
    self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
    names = json.loads(proc.stdout.strip().splitlines()[-1])
    self.assertEqual(tuple(names["learned"]), builtin_names.LEARNED)
    self.assertEqual(tuple(names["tasks"]), builtin_names.TASKS)
    self.assertEqual(tuple(names["hand"]), builtin_names.HAND_DESIGNED)
    self.assertEqual(tuple(names["pretrained"]), builtin_names.pretrained())
    self.assertEqual(tuple(names["terms"]), builtin_names.TERMS)
    self.assertEqual(tuple(names["estimators"]), ("truncated", "pes", "es"))

  def test_the_lazy_surfaces_still_answer(self):
    import flatl2o  # pylint: disable=g-import-not-at-top
    from flatl2o import meta, study  # pylint: disable=g-import-not-at-top
    self.assertTrue(callable(flatl2o.load_optimizer))
    self.assertTrue(callable(meta.meta_train))
    self.assertTrue(callable(study.run))
    self.assertTrue(callable(study.figures))  # the function, not the module
    self.assertEqual(meta.trainer.COLLAPSE_RATIO, meta.selection.COLLAPSE_RATIO)
    with self.assertRaisesRegex(AttributeError, "no attribute 'nope'"):
      getattr(meta, "nope")


class FastFailureTest(parameterized.TestCase):

  @parameterized.parameters(
      ("experiments.meta_train", "--optimizer=nope", "accepted: l2o_dm, rnnprop"),
      ("experiments.meta_train", "--regularizer=nope", "accepted: none, hessian, entropy"),
      ("experiments.meta_train", "--estimator=nope", "accepted: truncated, pes, es"),
      ("experiments.meta_train", "--import=no_such_module_xyz", "no module named"),
      ("experiments.meta_train", "--num_inner_steps=0", "num_inner_steps must be a positive"),
      ("experiments.meta_train", "--curriculum_horizons=20,200", "needs --curriculum"),
      ("experiments.evaluate", "--task=resnet", "--task=resnet"),
      ("experiments.evaluate", "--seeds=1,x", "--seeds must be distinct"),
      ("experiments.reproduce", "--preset=fast", "value should be one of <primary|sweep|smoke|cpu|models|gpu>"),
      ("experiments.reproduce", "--models=l2o_dm,lstm", "accepted: l2o_dm, rnnprop"),
  )
  def test_a_bad_flag_fails_without_importing_jax(self, module, arg, message):
    """Catches: a binary (or flatl2o's __init__) importing JAX before its flags are read."""
    proc = _run("-m", module, arg)
    self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
    self.assertIn(message, proc.stderr)
    heavy = {m for m in _imported(proc.stderr) if m.split(".")[0] in ("jax", "flax", "orbax")}
    self.assertEmpty(heavy)


if __name__ == "__main__":
  absltest.main()
