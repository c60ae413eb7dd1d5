"""The Examples of the main entry points run as written (optax-style docstrings): meta-training,
exports, the pretrained optimizers, the flatness functions, the registries and the study."""

import contextlib
import doctest

from absl.testing import absltest, parameterized

import flatl2o.compare
from flatl2o import checkpoints, pretrained, resolve, tasks
from flatl2o.flatness import entropy, hessian
from flatl2o.meta import estimators, terms, trainer
from flatl2o.optimizers import registry
from flatl2o import study
from flatl2o.study import driver

# What the Examples register (a task, an optimizer, a term, a preset) is dropped after each,
# so the tests that count a registry's names see the built-ins alone.
_REGISTRIES = (tasks._REGISTRY, registry._FACTORIES, registry.LEARNED, terms._REGISTRY,  # pylint: disable=protected-access
               estimators._REGISTRY, study.PRESETS)  # pylint: disable=protected-access


@contextlib.contextmanager
def _registries_restored():
  saved = [dict(r) for r in _REGISTRIES]
  try:
    yield
  finally:
    for live, before in zip(_REGISTRIES, saved):
      live.clear()
      live.update(before)

ENTRY_POINTS = {
    "meta_train": trainer.meta_train,
    "load_optimizer": checkpoints.load_optimizer,
    "pretrained.load": pretrained.load,
    "resolve": resolve.resolve,
    "hessian_trace": hessian.hessian_trace,
    "top_hessian_eigenvalue": hessian.top_hessian_eigenvalue,
    "lanczos": hessian.lanczos,
    "local_entropy_gap": entropy.local_entropy_gap,
    "tasks.register": tasks.register,
    "optimizers.register": registry.register,
    "terms (module)": terms,
    "terms.register": terms.register,
    "estimators (module)": estimators,
    "study.run": driver.run,
    "compare (package)": flatl2o.compare,
}


class EntryPointExamplesTest(parameterized.TestCase):

  @parameterized.named_parameters(*ENTRY_POINTS.items())
  def test_the_example_runs(self, obj):
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(obj, globs={})
    attempted = failed = 0
    for test in tests:
      with _registries_restored():
        result = runner.run(test)
      attempted, failed = attempted + result.attempted, failed + result.failed
    self.assertGreater(attempted, 1, "no Example in the docstring")
    self.assertEqual(failed, 0, "an Example failed (printed above)")


if __name__ == "__main__":
  absltest.main()
