"""Every Python snippet of the README runs as written, in order, in one namespace.

Budgets are capped so the test takes seconds (`num_meta_iterations` and
`num_steps` are patched down); everything else is the README's code verbatim.
A snippet that uses an undefined name, an API that moved, or a file no earlier
snippet wrote fails here.
"""

import dataclasses
import os
import re
from unittest import mock

import pytest
from absl.testing import absltest

import flatl2o

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def python_snippets(text: str) -> list[str]:
  return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.slow  # meta-trains and evaluates as the README does
class ReadmeTest(absltest.TestCase):

  def test_snippets_run_in_order(self):
    with open(README) as f:
      snippets = python_snippets(f.read())
    self.assertGreaterEqual(len(snippets), 3)
    real_config, real_train = flatl2o.meta.MetaTrainConfig, flatl2o.evaluation.train

    def small_config(**kwargs):
      kwargs = {**kwargs, "num_meta_iterations": 2, "validation_every": 2,
                "validation_horizon": 10, "num_inner_steps": 10, "unroll_length": 5,
                "meta_batch_size": 1, "validation_seeds": 1}
      return real_config(**kwargs)

    def short_train(task, tx, num_steps, key, **kwargs):
      del num_steps
      return real_train(task, tx, 20, key, **{**kwargs, "eval_every": 20})

    cwd = os.getcwd()
    os.chdir(self.create_tempdir().full_path)  # my_optimizer is written here
    self.addCleanup(os.chdir, cwd)
    namespace = {}
    with mock.patch.object(flatl2o.meta, "MetaTrainConfig", small_config), \
         mock.patch.object(flatl2o.evaluation, "train", short_train):
      for i, code in enumerate(snippets):
        with self.subTest(snippet=i):
          exec(compile(code, f"README.md python snippet {i + 1}", "exec"), namespace)  # pylint: disable=exec-used
    self.assertTrue(os.path.isfile(os.path.join("my_optimizer", "optimizer.json")))
    self.assertTrue(dataclasses.is_dataclass(namespace["result"]))


if __name__ == "__main__":
  absltest.main()
