"""pytest collects absltest cases; absl flags (e.g. --test_tmpdir) need parsing first.

The suite also shares one JAX persistent compilation cache between its worker
processes and the binaries they start (a fresh folder per pytest run, so no
stale program survives a change of code or versions): the binaries' tests
compile the same meta-step again and again otherwise.
"""

import os
import tempfile

from absl import flags

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  # The pytest controller imports this first; its workers and their
  # subprocesses inherit the variable, so they all use this one folder.
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="flatl2o-test-jax-cache-")

if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()
