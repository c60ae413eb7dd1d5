"""pytest collects absltest cases; absl flags (e.g. --test_tmpdir) need parsing first.

Two things keep the suite within minutes on 2 CPU cores (`pytest -n 2`, the
README's command):

- One JAX persistent compilation cache shared by the worker processes and the
  binaries they start (a fresh folder per pytest run, so no stale program
  survives a change of code or versions): the binaries' tests compile the same
  meta-step again and again otherwise.
- With `-n N` and no `--dist`, tests are handed out a class at a time in
  collection order (xdist's loadscope without reordering: a class is never
  split over workers, so its `setUpClass` runs once), and the slowest classes
  are collected first, so they start at once instead of trailing at the end.

The integration-level classes carry `@pytest.mark.slow` (registered in
setup.cfg): `pytest -q -m "not slow" -n 2 tests` is the fast lane for work in
progress; CI runs everything.
"""

import os
import tempfile

import pytest
from absl import flags

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  # The pytest controller imports this first; its workers and their
  # subprocesses inherit the variable, so they all use this one folder.
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="flatl2o-test-jax-cache-")

# Tests never download a dataset (flatl2o.data.sources.network_available is False for
# them and their subprocesses); the download path is tested with TFDS's mock data.
os.environ["FLATL2O_OFFLINE"] = "1"

if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

# Test classes (node-id prefixes) by measured duration, longest first
# (`pytest --durations=40`, 2 CPU cores).
SLOW_FIRST = (
    "tests/test_reproduce.py::SmokePresetTest",
    "tests/test_scale.py::ManyDevicesTest",
    "tests/test_reliability.py",
    "tests/test_readme.py",
    "tests/test_notebooks.py",
    "tests/test_cli.py::MetaTrainBinaryTest",
    "tests/test_scale.py",
    "tests/test_meta.py",
    "tests/test_study_resume.py",
    "tests/test_terms.py",
    "tests/test_doctests.py",
    # Then the slowest of the fast lane (-m "not slow", 2026-12-06).
    "tests/test_objective.py",
    "tests/test_known_answers.py",
)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
  option = config.option
  if getattr(option, "numprocesses", None) and getattr(option, "dist", None) == "no":
    option.dist = "loadscope"
    option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
  del config
  def rank(item):
    return next((i for i, prefix in enumerate(SLOW_FIRST) if item.nodeid.startswith(prefix)),
                len(SLOW_FIRST))
  items.sort(key=rank)  # stable: the rest keep their order
