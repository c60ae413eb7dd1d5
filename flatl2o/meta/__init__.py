"""Meta-training of learned optimizers: `meta_train(lopt, task, MetaTrainConfig(...))`.

Modules: `config` (MetaTrainConfig, RegularizerConfig), `inner` (the unrolled
inner training), `objective` (the flatness terms), `trainer` (meta-step,
validation, the loop), `run_dir` (run identity, resume, checkpoints, metrics),
`sharding` (the meta-batch over a device mesh).
"""

from flatl2o.meta import imitation, run_dir, sharding
from flatl2o.meta.config import META_LOSSES, MetaTrainConfig, RegularizerConfig
from flatl2o.meta.inner import InnerState, init_inner, rollout, unroll
from flatl2o.meta.trainer import (MetaTrainingDivergedError, MetaTrainingInterrupted,
                                  MetaTrainResult, imitation_step, init_meta_batch,
                                  meta_optimizer, meta_step, meta_train, num_devices,
                                  validate)

__all__ = ["META_LOSSES", "InnerState", "MetaTrainConfig", "MetaTrainResult",
           "MetaTrainingDivergedError", "MetaTrainingInterrupted", "RegularizerConfig", "init_inner", "init_meta_batch",
           "imitation", "imitation_step", "meta_optimizer", "meta_step", "meta_train", "rollout",
           "num_devices", "run_dir", "sharding", "unroll",
           "validate"]
