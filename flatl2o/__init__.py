"""flatl2o: learned optimizers in JAX that find flat minima.

Subpackages: `data` (datasets as device arrays), `tasks` (optimizees),
`optimizers` (optax transformations: hand-designed by name, learned
architectures), `flatness` (Hessian and local-entropy measures), `meta`
(meta-training and run directories), `evaluation` (train and report),
`checkpoints` (export and load learned optimizers), `pretrained` (learned
optimizers shipped with the package, by name), `environment` (where a run
ran).
"""

import importlib

__version__ = "0.1.0"

__all__ = ["data", "environment", "evaluation", "flatness", "load_optimizer", "meta",
           "optimizers", "pretrained", "save_optimizer", "tasks"]

_SUBPACKAGES = ("data", "environment", "evaluation", "flatness", "meta", "optimizers",
                "pretrained", "tasks")


def __getattr__(name):
  # Imported on first use (PEP 562): `import flatl2o` stays light, so the binaries
  # check their flags before JAX is imported. `flatl2o.meta`, ... work as before.
  if name in _SUBPACKAGES:
    return importlib.import_module(f"flatl2o.{name}")
  if name in ("load_optimizer", "save_optimizer"):
    return getattr(importlib.import_module("flatl2o.checkpoints"), name)
  raise AttributeError(f"module 'flatl2o' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(__all__))
