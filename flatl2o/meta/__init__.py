"""Meta-training of learned optimizers: `meta_train(lopt, task, MetaTrainConfig(...))`.

Modules: `config` (MetaTrainConfig, the flag-facing record; UnrollConfig, what
compiled steps read; the flatness terms HessianTerm | EntropyTerm), `inner`
(the unrolled inner training), `objective` (the flatness terms), `estimators`
(truncated backprop, PES, ES), `selection` (best by validation, the collapse
rule), `schedules` (curriculum, imitation), `trainer` (the jitted steps and the
`meta_train` driver), `run_dir` (run identity, resume, checkpoints, metrics),
`sharding` (the meta-batch over a device mesh).
"""

from flatl2o.meta import (config, estimators, imitation, run_dir, schedules, selection,
                          sharding)
from flatl2o.meta.config import (ESTIMATORS, META_LOSSES, EntropyTerm, FlatnessTerm,
                                 HessianTerm, MetaTrainConfig, RegularizerConfig, UnrollConfig)
from flatl2o.meta.inner import InnerState, init_inner, rollout, unroll
from flatl2o.meta.trainer import (MetaTrainingDivergedError, MetaTrainingInterrupted,
                                  MetaTrainResult, MetaTrainState, imitation_step,
                                  init_meta_batch, meta_optimizer, meta_step, meta_train,
                                  num_devices, validate)

__all__ = ["ESTIMATORS", "META_LOSSES", "EntropyTerm", "FlatnessTerm", "HessianTerm",
           "InnerState", "MetaTrainConfig", "MetaTrainResult", "MetaTrainState",
           "MetaTrainingDivergedError", "MetaTrainingInterrupted", "RegularizerConfig",
           "UnrollConfig", "config", "estimators", "imitation", "imitation_step", "init_inner",
           "init_meta_batch", "meta_optimizer", "meta_step", "meta_train", "num_devices",
           "rollout", "run_dir", "schedules", "selection", "sharding", "unroll", "validate"]
