"""flatl2o: learned optimizers in JAX that find flat minima.

Subpackages: `data` (datasets as device arrays), `tasks` (optimizees),
`optimizers` (optax transformations: hand-designed by name, learned
architectures), `meta` (meta-training), `evaluation` (train and report),
`checkpoints` (export and load learned optimizers).
"""

from flatl2o import data, evaluation, meta, optimizers, tasks
from flatl2o.checkpoints import load_optimizer, save_optimizer

__version__ = "0.1.0"

__all__ = ["data", "evaluation", "load_optimizer", "meta", "optimizers", "save_optimizer",
           "tasks"]
