r"""The main job: the paper's protocol, every learned optimizer and regularizer.

  python -m experiments.reproduce                      # --preset=cpu: runs/reproduce-cpu
  python -m experiments.reproduce --preset=smoke       # every cell, tiny budgets:
                                                       # runs/reproduce-smoke
  python -m experiments.reproduce --dataset=idx:PATH --other_dataset=digits

Meta-trains L2O-DM, RNNProp, L2O-Scale, MLPLOpt and the enhanced L2O-DM recipe
(curriculum + imitation) plain, with the Hessian-trace term and with the
local-entropy term (coefficients chosen on validation from an L2O-DM sweep)
over several meta-training seeds on `mlp_sigmoid`; meta-tests them and tuned
Adam / SGD, SAM and Entropy-SGD on the seen optimizee and on unseen ones
(`mlp_relu`, `mlp_deep`, `conv`, and with --other_dataset the same MLP on
another dataset) for longer than the meta-training horizon. The study is
library code, `flatl2o.study` (its `driver` lists every step; a notebook runs
`study.run(study.StudyConfig(...), run_dir)`); this binary parses the flags.

Writes to RUN_DIR (default runs/reproduce-PRESET, one folder per preset)
results.json (every cell), results.md (the tables) and PNG figures
(training-loss curves, test accuracy, Hessian trace against training loss,
the coefficient sweep). Every cell is cached in RUN_DIR/cells: rerunning
the same command continues an interrupted run; a folder holding another
configuration is refused (exit code 2). A smoke run's results.md, printed
tables and figure titles begin by saying that its numbers mean nothing.
"""

from __future__ import annotations

import os
import time

from absl import flags, logging

from experiments import _cli
from flatl2o import study

_PRESET = flags.DEFINE_enum("preset", "cpu", list(study.PRESETS),
                            "Budgets: smoke (every cell, tiny budgets; minutes), cpu (the full "
                            "protocol; 112 minutes on 2 CPU cores shared with a second run, most "
                            "of it the conv optimizee; docs/results.md), gpu "
                            "(larger budgets for one GPU; not yet measured).")
_DATASET = flags.DEFINE_string("dataset", "digits", "Dataset of the meta-training optimizee: "
                               "digits (embedded), a prepared TFDS name, or idx:PATH.")
_OTHER = flags.DEFINE_string("other_dataset", None, "A second dataset for the seen MLP as an "
                             "unseen optimizee (e.g. idx:PATH or digits); none by default.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir for prepared datasets.")
_MODELS = flags.DEFINE_list("models", list(study.MODELS),
                            f"Learned optimizers: {', '.join(study.MODELS)}.")
_REGULARIZERS = flags.DEFINE_list("regularizers", list(study.REGULARIZERS),
                                  f"Regularizers: {', '.join(study.REGULARIZERS)}.")
_OPTIMIZEES = flags.DEFINE_list(
    "optimizees", None,
    f"Meta-test optimizees, of {', '.join((study.SEEN,) + study.UNSEEN)} and "
    f"{study.OTHER_DATA} (the seen MLP on --other_dataset); default: all of them, "
    f"{study.OTHER_DATA} only with --other_dataset. conv on 28x28 images is slow on a CPU.")
_RUN_DIR = flags.DEFINE_string(
    "run_dir", None, "Output folder (cells cached here); default runs/reproduce-PRESET, one "
    "per preset, so a smoke run never holds the folder of a real one.")


def default_run_dir(preset: str) -> str:
  """The folder of a preset's run when --run_dir is not given."""
  return os.path.join("runs", f"reproduce-{preset}")


def main(argv):
  del argv
  config = study.StudyConfig(
      preset=_PRESET.value, dataset=_DATASET.value, other_dataset=_OTHER.value,
      data_dir=_DATA_DIR.value, models=tuple(_MODELS.value),
      regularizers=tuple(_REGULARIZERS.value),
      optimizees=tuple(_OPTIMIZEES.value) if _OPTIMIZEES.value else None)
  run_dir = _RUN_DIR.value or default_run_dir(config.preset)
  stop = _cli.StopRequests()
  start = time.perf_counter()
  try:
    results = study.run(config, run_dir, should_stop=stop.requested, log=logging.info)
  except study.StudyInterrupted as e:
    stop.exit(f"interrupted while {e}; finished cells are kept in {run_dir}; rerun "
              "the same command to continue")
  results["wall_time_s"] = time.perf_counter() - start
  table = study.write_outputs(results, run_dir)
  print(study.markdown(results, table))
  print(f"wrote {os.path.join(run_dir, 'results.json')}, results.md and figures "
        f"({results['wall_time_s']:.0f} s)")


if __name__ == "__main__":
  _cli.run(main)
