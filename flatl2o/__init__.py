"""flatl2o: learned optimizers in JAX that find flat minima.

Subpackages: `data` (datasets as device arrays), `tasks` (optimizees),
`optimizers` (optax transformations by name), `evaluation` (train and report).
"""

from flatl2o import data, evaluation, optimizers, tasks

__version__ = "0.1.0"

__all__ = ["data", "evaluation", "optimizers", "tasks"]
