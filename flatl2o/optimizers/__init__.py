"""Optimizers as optax transformations: hand-designed ones by name (`get`)."""

from flatl2o.optimizers.registry import OptimizerError, get, hparams, names

__all__ = ["OptimizerError", "get", "hparams", "names"]
