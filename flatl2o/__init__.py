"""flatl2o: learned optimizers in JAX that find flat minima.

Subpackages: `data` (datasets as device arrays), `tasks` (optimizees),
`optimizers` (optax transformations: hand-designed by name, learned
architectures), `flatness` (Hessian and local-entropy measures), `meta`
(meta-training and run directories), `evaluation` (train and report),
`checkpoints` (export and load learned optimizers), `pretrained` (learned
optimizers shipped with the package, by name), `environment` (where a run
ran).
"""

from flatl2o import _lazy

__version__ = "0.1.0"

__all__ = ["data", "environment", "evaluation", "flatness", "load_optimizer", "meta",
           "optimizers", "pretrained", "save_optimizer", "tasks"]

_SUBPACKAGES = ("data", "environment", "evaluation", "flatness", "meta", "optimizers",
                "pretrained", "tasks")


# Imported on first use: `import flatl2o` stays light, so the binaries check their
# flags before JAX is imported. `flatl2o.meta`, ... work as before.
__getattr__, __dir__ = _lazy.attach(
    __name__, _SUBPACKAGES,
    {"load_optimizer": "checkpoints", "save_optimizer": "checkpoints"}, __all__)
