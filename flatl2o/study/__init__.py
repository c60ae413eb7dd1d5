"""The paper's study (Yang et al., AISTATS 2023) as library code: run it from Python.

The paper claims that a flatness term in the meta-objective improves the test
accuracy of the models a learned optimizer trains (*optimizee* generalization)
"on multiple sophisticated L2O models and diverse optimizees", and keeps this
apart from *optimizer* generalization (optimizees it never saw). A study
meta-trains every model x regularizer x seed, meta-tests them beside tuned
baselines on seen and unseen optimizees, measures flatness at matched training
loss, and tabulates paired differences (`driver` lists the stages).

  >>> from flatl2o import study
  >>> results = study.run(study.StudyConfig(preset="smoke"), "runs/study")
  >>> table = study.write_outputs(results, "runs/study")  # results.json / .md, figures

Modules: `config` (Preset, PRESETS, StudyConfig), `sweep` (coefficients by
decades to collapse; the shipped sweep), `analysis` (the primary question's
differences, intervals, p-values, MDEs; flatness against generalization), `commands` (a cell's
MetaTrainConfig and meta_train command line), `cells` (the JSON cell cache and
the folder's identity), `stages` (meta-training, tuning, meta-tests, matched
flatness), `driver` (run, write_outputs), `tables` (summarize, markdown),
and `figures`. Given optimizers compared on one optimizee (`experiments.evaluate`)
are `flatl2o.compare`.
"""

from flatl2o import _lazy

from flatl2o.study.config import (BASELINES, MODELS, OTHER_DATA, PRESETS, REGULARIZERS, SEEN,
                                  TEST_SEED_BASE, TUNING_SEED_BASE, UNSEEN, Preset,
                                  ProtocolConfig, ProtocolInterrupted, StudyConfig,
                                  StudyInterrupted, config_from_identity, upgrade_identity)
from flatl2o.study import analysis, sweep
from flatl2o.study.analysis import comparisons, correlations
from flatl2o.study.figures import figures  # (numpy only, like tables; matplotlib when called)
from flatl2o.study.tables import (METRICS, answer, by_seed, group_label, markdown, over_seeds, paired,
                                  summarize, units)

# The rest imports JAX: loaded on first use (PEP 562), so
# experiments.reproduce checks its flags before the heavy imports.
_NAMES = {
    "Cells": "cells", "cell_names": "cells",
    **{n: "commands" for n in ("architecture", "meta_config", "meta_train_command",
                               "regularizer_label", "study_command")},
    "run": "driver", "write_outputs": "driver", "machine": "driver",
    **{n: "stages" for n in ("best_within", "choose_coefficient", "flatness_fn", "matched_level",
                             "matched_run",
                             "meta_train_cell", "optimizee_tasks", "run_test", "tune",
                             "validations")},
}
_MODULES = ("cells", "commands", "driver", "stages")




__all__ = [
    "analysis", "answer", "comparisons", "correlations", "machine", "matched_level", "sweep",
    "BASELINES", "Cells", "METRICS", "MODELS", "OTHER_DATA", "PRESETS", "Preset",
    "ProtocolConfig", "ProtocolInterrupted", "REGULARIZERS", "SEEN", "StudyConfig",
    "StudyInterrupted", "TEST_SEED_BASE", "TUNING_SEED_BASE", "UNSEEN", "architecture",
    "best_within", "by_seed", "cell_names", "choose_coefficient", "config_from_identity",
    "figures", "flatness_fn", "group_label", "markdown", "matched_run", "meta_config",
    "meta_train_cell", "meta_train_command", "optimizee_tasks", "over_seeds", "paired",
    "regularizer_label", "run", "run_test", "study_command", "summarize", "tune", "units",
    "upgrade_identity", "validations", "write_outputs",
]

__getattr__, __dir__ = _lazy.attach(__name__, _MODULES, _NAMES, __all__)
