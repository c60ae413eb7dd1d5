r"""The main job: the study of whether a flatness term makes a learned optimizer generalize.

  python -m experiments.reproduce                  # --preset=primary: runs/reproduce-primary
  python -m experiments.reproduce --preset=sweep   # the coefficient sweep it takes its
                                                   # coefficients from (shipped)
  python -m experiments.reproduce --preset=models  # the question asked of every model, at the
                                                   # training horizon and 5x it (hours)
  python -m experiments.reproduce --preset=cpu     # the broad protocol (hours, resumable)
  python -m experiments.reproduce --preset=smoke   # every code path, tiny budgets

The default preset answers one question fixed in advance (docs/results.md,
"Design"): does the Hessian-trace or the local-entropy term change the test
accuracy of what L2O-DM trains, against plain L2O-DM selected within the same
meta-step budget, over 5 meta-training seeds x 5 test seeds, on the seen MLP
and two unseen ones? Its results.md opens with the answer: each difference
with its 95% interval over meta-training seeds, p-value (Holm) and minimum
detectable effect. Coefficients come from the shipped sweep
(flatl2o/study/sweep.json, made by --preset=sweep; --sweep_file=PATH takes
another sweep's results.json). The models preset asks the same of L2O-DM,
RNNProp, L2O-Scale, the enhanced recipe and MLPLOpt, each with its own sweep's
coefficients (flatl2o/study/sweep_models.json, made by --preset=sweep
--models=...). The cpu and gpu presets add RNNProp,
L2O-Scale, MLPLOpt, the enhanced recipe, conv, SGD / SAM / Entropy-SGD and
their own sweep. The study is library code, `flatl2o.study` (its `driver`
lists every step; a notebook runs `study.run(study.StudyConfig(...),
run_dir)`); this binary parses the flags.

Writes to RUN_DIR (default runs/reproduce-PRESET, one folder per preset)
results.json (every cell, the "primary" and "sweep" lists), results.md and
PNG figures. Every cell is cached in RUN_DIR/cells: rerunning the same command
continues an interrupted run; a folder holding another configuration is
refused (exit code 2). A smoke run's results.md, printed tables and figure
titles begin by saying that its numbers mean nothing.
"""

from __future__ import annotations

import os

from absl import flags, logging

from experiments import _cli
from flatl2o import study

_PRESET = flags.DEFINE_enum("preset", "primary", list(study.PRESETS),
                            "primary (the default study: L2O-DM plain / + Hessian / + entropy, "
                            "5 meta-seeds; docs/results.md has its time), sweep (the "
                            "coefficient sweep primary takes its coefficients from; with "
                            "--models, each model's), models (the primary design for every "
                            "model, at the training horizon and 5x it; hours), smoke "
                            "(every code path, tiny budgets), cpu (the broad protocol: every "
                            "model and optimizee; hours, resumable), gpu (for one GPU; not "
                            "yet measured).")
_DATASET = flags.DEFINE_string("dataset", "digits", "Dataset of the meta-training optimizee: "
                               "digits (embedded), a prepared TFDS name, or idx:PATH.")
_OTHER = flags.DEFINE_string("other_dataset", None, "A second dataset for the seen MLP as an "
                             "unseen optimizee (e.g. idx:PATH or digits); none by default.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir for prepared datasets.")
_MODELS = flags.DEFINE_list("models", None, f"Learned optimizers, of "
                            f"{', '.join(study.MODELS)}; default: the preset's (primary, "
                            "sweep: l2o_dm; models, cpu, gpu, smoke: all).")
_META_SEEDS = flags.DEFINE_list("meta_seeds", None, "Meta-training seeds (at least 2); "
                                "default: the preset's (primary 0-4, gpu 0-7).")
_HORIZONS = flags.DEFINE_list("horizons", None, "Meta-test horizons (training steps) the "
                              "comparisons are made at, the first the primary one, e.g. "
                              "200,1000 (the training horizon and 5x it): each a positive "
                              "multiple of the preset's eval_every (50); the meta-tests run "
                              "to the largest. Default: the preset's.")
_SWEEP_FILE = flags.DEFINE_string("sweep_file", None, "A --preset=sweep run's results.json "
                                  "to take the coefficients from (presets primary); default: "
                                  "the sweep shipped with flatl2o.")
_REGULARIZERS = flags.DEFINE_list("regularizers", list(study.REGULARIZERS),
                                  f"Regularizers: {', '.join(study.REGULARIZERS)}.")
_OPTIMIZEES = flags.DEFINE_list(
    "optimizees", None,
    f"Meta-test optimizees, of {', '.join((study.SEEN,) + study.UNSEEN)} and "
    f"{study.OTHER_DATA} (the seen MLP on --other_dataset); default: the preset's (primary: "
    "mlp_sigmoid, mlp_relu, mlp_deep; the others: all of them, "
    f"{study.OTHER_DATA} only with --other_dataset). conv on 28x28 images is slow on a CPU.")
_RUN_DIR = flags.DEFINE_string(
    "run_dir", None, "Output folder (cells cached here); default runs/reproduce-PRESET, one "
    "per preset, so a smoke run never holds the folder of a real one.")


def default_run_dir(preset: str) -> str:
  """The folder of a preset's run when --run_dir is not given."""
  return os.path.join("runs", f"reproduce-{preset}")


def _integers(flag: str, values, example: str):
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise ValueError(f"--{flag} must be integers, e.g. {example}; got {','.join(values)}"
                     ) from None


def main(argv):
  del argv
  run_dir = _RUN_DIR.value or default_run_dir(_PRESET.value)
  _cli.check_output_folder("--run_dir", run_dir)
  config = study.StudyConfig(
      preset=_PRESET.value, dataset=_DATASET.value, other_dataset=_OTHER.value,
      data_dir=_DATA_DIR.value, models=tuple(_MODELS.value) if _MODELS.value else None,
      regularizers=tuple(_REGULARIZERS.value),
      optimizees=tuple(_OPTIMIZEES.value) if _OPTIMIZEES.value else None,
      meta_seeds=(_integers("meta_seeds", _META_SEEDS.value, "0,1,2,3,4")
                  if _META_SEEDS.value else None),
      horizons=(_integers("horizons", _HORIZONS.value, "200,1000")
                if _HORIZONS.value is not None else None),
      sweep_file=_SWEEP_FILE.value)
  stop = _cli.StopRequests()
  try:
    results = study.run(config, run_dir, should_stop=stop.requested, log=logging.info)
  except study.StudyInterrupted as e:
    stop.exit(f"interrupted while {e}; finished cells are kept in {run_dir}; rerun "
              "the same command to continue")
  results["command"] = study.study_command(config)
  table = study.write_outputs(results, run_dir)
  print(study.answer(results, table))
  parts = results.get("wall_time_parts", 1)
  parts = f" over {parts} parts" if parts > 1 else ""
  print(f"The whole report: {os.path.join(run_dir, 'results.md')} (results.json and the "
        f"figures beside it; {results['wall_time_s']:.0f} s of computing{parts}).")


if __name__ == "__main__":
  _cli.run(main)
