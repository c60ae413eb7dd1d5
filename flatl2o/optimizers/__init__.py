"""Optimizers as optax transformations.

Hand-designed ones by name (`get('adam')`; `default_hparams(name)` lists what
each accepts), learned architectures as frozen dataclasses (`L2ODM()`,
`RNNProp()`, `L2OScale()`, `MLPLOpt()`, or `learned('l2o_dm')`) following the `LearnedOptimizer` protocol,
whose `transform(meta_params)` is an optax transformation
(`base.architecture_hparams(lopt)` gives an architecture's settings).
`register(name, cls_or_factory)` adds a user's own (see `registry.register`).
"""

from flatl2o.optimizers.base import LearnedOptimizer
from flatl2o.optimizers.registry import (OptimizerError, default_hparams, get, learned,
                                         learned_names, names, register)
# Each architecture module registers its class on import; this order is learned_names()'s.
from flatl2o.optimizers.l2o_dm import L2ODM, L2ODMState  # isort: skip
from flatl2o.optimizers.rnnprop import RNNProp, RNNPropState  # isort: skip
from flatl2o.optimizers.l2o_scale import L2OScale, L2OScaleState  # isort: skip
from flatl2o.optimizers.mlp_lopt import MLPLOpt, MLPLOptState  # isort: skip
from flatl2o.optimizers.resolve import resolve  # isort: skip

__all__ = ["L2ODM", "L2ODMState", "L2OScale", "L2OScaleState", "LearnedOptimizer", "MLPLOpt", "MLPLOptState",
           "OptimizerError", "RNNProp", "RNNPropState", "default_hparams", "get", "learned",
           "learned_names", "names", "register"]
