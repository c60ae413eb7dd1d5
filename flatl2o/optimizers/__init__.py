"""Optimizers as optax transformations.

Hand-designed ones by name (`get('adam')`), learned architectures as frozen
dataclasses (`L2ODM()`, `MLPLOpt()`, or `learned('l2o_dm')`) whose
`transform(meta_params)` is an optax transformation.
"""

from flatl2o.optimizers.base import LearnedOptimizer
from flatl2o.optimizers.l2o_dm import L2ODM, L2ODMState
from flatl2o.optimizers.mlp_lopt import MLPLOpt, MLPLOptState
from flatl2o.optimizers.registry import (OptimizerError, get, hparams, learned,
                                         learned_names, names)

__all__ = ["L2ODM", "L2ODMState", "LearnedOptimizer", "MLPLOpt", "MLPLOptState",
           "OptimizerError", "get", "hparams", "learned", "learned_names", "names"]
