"""Meta-training of learned optimizers: `meta_train(lopt, task, MetaTrainConfig(...))`."""

from flatl2o.meta.config import META_LOSSES, MetaTrainConfig
from flatl2o.meta.objective import RegularizerConfig
from flatl2o.meta.trainer import (MetaTrainingDivergedError, MetaTrainResult, meta_step,
                                  meta_train, validate)
from flatl2o.meta.inner import InnerState, init_inner, rollout, unroll

__all__ = ["META_LOSSES", "InnerState", "MetaTrainConfig", "MetaTrainResult", "MetaTrainingDivergedError", "RegularizerConfig", "init_inner",
           "meta_step", "meta_train", "rollout", "unroll", "validate"]
