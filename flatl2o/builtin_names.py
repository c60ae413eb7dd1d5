"""The built-in names, without importing JAX: what the binaries' flags accept.

The binaries define `--optimizer` and `--task` from these before the heavy
imports, so a bad flag fails in well under a second. The registries
(`flatl2o.optimizers.learned_names()`, `flatl2o.tasks.names()`) hold the same
names first, in this order (tests/test_fast_failure.py checks it), plus any a
user registers.
"""

import os

LEARNED = ("l2o_dm", "rnnprop", "l2o_scale", "mlp_lopt")
TASKS = ("mlp_sigmoid", "mlp_relu", "mlp_deep", "conv", "quadratic")
TERMS = ("hessian", "entropy")  # flatl2o.meta.terms: the flatness terms of the meta-objective
HAND_DESIGNED = ("sgd", "momentum", "adam", "rmsprop", "adagrad", "sam", "entropy_sgd")


def pretrained() -> tuple[str, ...]:
  """The shipped pretrained optimizers, as `flatl2o.pretrained.names()` lists them (sorted).

  Returns:
    The sorted names of the folders under `flatl2o/pretrained` holding an `optimizer.json`;
    empty if that folder does not exist.
  """
  root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")
  if not os.path.isdir(root):
    return ()
  return tuple(sorted(n for n in os.listdir(root)
                      if os.path.isfile(os.path.join(root, n, "optimizer.json"))))
