"""Meta-training of learned optimizers: `meta_train(lopt, task, MetaTrainConfig(...))`.

Modules: `config` (MetaTrainConfig, the flag-facing record; UnrollConfig, what
compiled steps read), `terms` (the flatness terms as registered plug-ins:
HessianTerm, EntropyTerm, a user's own via `terms.register`), `inner`
(the unrolled inner training), `objective` (the flatness terms), `estimators`
(truncated backprop, PES, ES), `selection` (best by validation, the collapse
rule), `schedules` (curriculum, imitation), `trainer` (the jitted steps and the
`meta_train` driver), `run_dir` (run identity, resume, checkpoints, metrics),
`sharding` (the meta-batch over a device mesh), `diagnostics` (the flatness
term's share of the meta-gradient).
"""

from flatl2o import _lazy

from flatl2o.meta import config, terms
from flatl2o.meta.config import (ESTIMATORS, META_LOSSES, EntropyTerm, FlatnessTerm,
                                 HessianTerm, MetaTrainConfig, RegularizerConfig, UnrollConfig)

# The rest imports JAX: loaded on first use (PEP 562), so the configuration is
# importable, and a binary's flags checkable, without it.
_MODULES = ("diagnostics", "estimators", "imitation", "inner", "objective", "run_dir", "schedules",
            "selection", "sharding", "trainer")
_NAMES = {
    "gradient_ratio": "diagnostics",
    "InnerState": "inner", "init_inner": "inner", "rollout": "inner", "unroll": "inner",
    **{name: "trainer" for name in (
        "MetaTrainingDivergedError", "MetaTrainingInterrupted", "MetaTrainResult",
        "MetaTrainState", "imitation_step", "init_meta_batch", "meta_optimizer", "meta_step",
        "meta_train", "num_devices", "validate")},
}

__all__ = ["ESTIMATORS", "META_LOSSES", "EntropyTerm", "FlatnessTerm", "HessianTerm",
           "InnerState", "MetaTrainConfig", "MetaTrainResult", "MetaTrainState",
           "MetaTrainingDivergedError", "MetaTrainingInterrupted", "RegularizerConfig",
           "UnrollConfig", "config", "diagnostics", "estimators", "gradient_ratio", "imitation", "imitation_step", "init_inner",
           "init_meta_batch", "meta_optimizer", "meta_step", "meta_train", "num_devices",
           "rollout", "run_dir", "schedules", "selection", "sharding", "terms", "unroll", "validate"]

__getattr__, __dir__ = _lazy.attach(__name__, _MODULES, _NAMES, __all__)
