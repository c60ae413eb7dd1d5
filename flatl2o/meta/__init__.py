"""Meta-training of learned optimizers: `meta_train(lopt, task, MetaTrainConfig(...))`.

Modules: `config` (MetaTrainConfig, the flag-facing record; UnrollConfig, what
compiled steps read; the flatness terms HessianTerm | EntropyTerm), `inner`
(the unrolled inner training), `objective` (the flatness terms), `estimators`
(truncated backprop, PES, ES), `selection` (best by validation, the collapse
rule), `schedules` (curriculum, imitation), `trainer` (the jitted steps and the
`meta_train` driver), `run_dir` (run identity, resume, checkpoints, metrics),
`sharding` (the meta-batch over a device mesh).
"""

import importlib

from flatl2o.meta import config
from flatl2o.meta.config import (ESTIMATORS, META_LOSSES, EntropyTerm, FlatnessTerm,
                                 HessianTerm, MetaTrainConfig, RegularizerConfig, UnrollConfig)

# The rest imports JAX: loaded on first use (PEP 562), so the configuration is
# importable, and a binary's flags checkable, without it.
_MODULES = ("estimators", "imitation", "inner", "objective", "run_dir", "schedules",
            "selection", "sharding", "trainer")
_NAMES = {
    "InnerState": "inner", "init_inner": "inner", "rollout": "inner", "unroll": "inner",
    **{name: "trainer" for name in (
        "MetaTrainingDivergedError", "MetaTrainingInterrupted", "MetaTrainResult",
        "MetaTrainState", "imitation_step", "init_meta_batch", "meta_optimizer", "meta_step",
        "meta_train", "num_devices", "validate")},
}


def __getattr__(name):
  if name in _MODULES:
    return importlib.import_module(f"flatl2o.meta.{name}")
  if name in _NAMES:
    return getattr(importlib.import_module(f"flatl2o.meta.{_NAMES[name]}"), name)
  raise AttributeError(f"module 'flatl2o.meta' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(__all__))

__all__ = ["ESTIMATORS", "META_LOSSES", "EntropyTerm", "FlatnessTerm", "HessianTerm",
           "InnerState", "MetaTrainConfig", "MetaTrainResult", "MetaTrainState",
           "MetaTrainingDivergedError", "MetaTrainingInterrupted", "RegularizerConfig",
           "UnrollConfig", "config", "estimators", "imitation", "imitation_step", "init_inner",
           "init_meta_batch", "meta_optimizer", "meta_step", "meta_train", "num_devices",
           "rollout", "run_dir", "schedules", "selection", "sharding", "unroll", "validate"]
