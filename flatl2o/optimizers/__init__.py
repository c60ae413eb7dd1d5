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

__all__ = ["L2ODM", "L2ODMState", "L2OScale", "L2OScaleState", "LearnedOptimizer", "MLPLOpt", "MLPLOptState",
           "OptimizerError", "RNNProp", "RNNPropState", "default_hparams", "get", "learned",
           "learned_names", "names", "register", "resolve"]


def __getattr__(name):  # pylint: disable=invalid-name  (PEP 562)
  # `resolve` loads from checkpoints and pretrained, which import this package: it lives
  # above them (flatl2o/resolve.py) and comes here when first asked for.
  if name == "resolve":
    from flatl2o.resolve import resolve  # pylint: disable=g-import-not-at-top
    return resolve
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
