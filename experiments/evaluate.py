r"""Train an optimizee with an optimizer on several seeds; report test accuracy.

  python -m experiments.evaluate --task=mlp_sigmoid --dataset=digits \
      --optimizer=adam --num_steps=1000 --seeds=0,1,2,3,4 --out_dir=runs/adam

--optimizer takes a hand-designed optimizer's name, the folder of an exported
learned optimizer (RUN_DIR/optimizer), or `pretrained:NAME`, one of the learned
optimizers shipped with flatl2o (`flatl2o.pretrained.names()`; an unknown NAME
is one line listing them, exit code 2). --learning_rate is for hand-designed
optimizers only.

Writes to --out_dir: `metrics.jsonl` (one JSON object per seed and evaluated
step), `summary.json` (configuration, per-seed finals with the flatness of the
final parameters, mean and 95% interval over seeds) and `curves.png` (when
matplotlib is installed); prints a table. With `--landscape`, the first seed's
final parameters also get loss-landscape slices of the training loss on the
flatness batch (`evaluation.loss_landscape`: filter-normalised directions, Li
et al. 2018): `landscape_1d.png` (41 points on [-1, 1]), `landscape_2d.png`
(21 x 21 contours) and the 1-D values under "landscape" in summary.json.

The default folder is runs/evaluate/TASK-DATASET-OPTIMIZER, where OPTIMIZER
names the learning rate when one is given (`adam-lr0.1`) and an exported
optimizer by its architecture, folder and checksum (`l2o_dm-optimizer-1a2b3c4d`)
or as `pretrained-NAME` (its checksum is part of the configuration, so the
results of an older version of it are refused too, not overwritten), so two
configurations never share a folder. A folder holding the results of another
configuration is never overwritten (exit code 2); rerunning the same
configuration replaces its results.

Several optimizers in one command: a comma-separated --optimizer
(`--optimizer=adam,sgd,pretrained:l2o_dm`; `pretrained:*` is every shipped
one) trains each on the same seeds into one folder (default
runs/evaluate/TASK-DATASET-compare-NAMES): `table.md` (each optimizer's figures
and its test-accuracy difference to the first, paired seed by seed, with its
interval and p-value; compilation time in a column of its own, never in the
times per run), `curves.png` (every optimizer overlaid, with its band over
seeds), `summary.json` (an `optimizers` list in the order given, each one's
figures) and `metrics.jsonl`. Hand-designed optimizers then run at their
default learning rates (--learning_rate is for one optimizer).

The work is `flatl2o.compare.multiseed.evaluate` and `flatl2o.compare.paired.compare`
(callable from Python); this binary turns the flags into their configurations.
"""

from __future__ import annotations

import os
import re

from absl import flags, logging

from experiments import _cli
from flatl2o import builtin_names

# Only light modules above: the flags are checked before JAX and the rest are
# imported (in main), so a bad flag fails at once.
_TASK = _cli.name_flag("task", "mlp_sigmoid", builtin_names.TASKS, "flatl2o.tasks:names",
                       "Optimizee.")
_DATASET = flags.DEFINE_string(
    "dataset", None, "Dataset: digits (default; embedded), mnist, fashion_mnist, cifar10 "
    "(TFDS, prepared), or idx:PATH. The quadratic task takes none.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir for prepared datasets.")
_OPTIMIZER = flags.DEFINE_string(
    "optimizer", "adam", f"Optimizer name ({', '.join(builtin_names.HAND_DESIGNED)}), the "
    "path of an exported learned optimizer (e.g. RUN_DIR/optimizer), or pretrained:NAME, a "
    "learned optimizer shipped with flatl2o "
    f"({', '.join(builtin_names.pretrained()) or 'none'}).")
_LEARNING_RATE = flags.DEFINE_float(
    "learning_rate", None, "Learning rate of the hand-designed optimizer (in a comparison, of "
    "its one hand-designed optimizer: e.g. --optimizer=adam,pretrained:l2o_dm "
    "--learning_rate=0.1 compares with tuned Adam); default: its documented default.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 1000, "Training steps.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Minibatch size.", lower_bound=1)
_EVAL_EVERY = flags.DEFINE_integer(
    "eval_every", 100, "Steps between validation/test evaluations.", lower_bound=1)
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"],
                           "Comma-separated non-negative integer seeds, one run each.")
_OUT_DIR = flags.DEFINE_string(
    "out_dir", None, "Output folder; default runs/evaluate/TASK-DATASET-OPTIMIZER.")
_LANDSCAPE = flags.DEFINE_bool(
    "landscape", False, "Also slice the training loss around the first seed's final "
    "parameters along filter-normalised directions: landscape_1d.png, landscape_2d.png and "
    "summary.json's \"landscape\".")


def _check_seeds(values):
  if not values or not all(re.fullmatch(r"\d+", v) for v in values):
    return False
  return len(set(values)) == len(values)


flags.register_validator("seeds", _check_seeds,
                         "--seeds must be distinct non-negative integers, e.g. 0,1,2")
flags.register_validator("learning_rate", lambda v: v is None or v > 0,
                         "--learning_rate must be positive")


def _specs(value: str) -> list[str]:
  return [v.strip() for v in value.split(",")]


def _check_optimizers(value: str) -> bool:
  """Names checked before the heavy imports: hand-designed, pretrained:NAME or *, a folder."""
  specs = _specs(value)
  if not all(specs):
    raise flags.ValidationError(f"--optimizer={value}: an empty name in the list")
  shipped = builtin_names.pretrained()
  for spec in specs:
    if spec in builtin_names.HAND_DESIGNED or spec == "pretrained:*":
      continue
    if spec.startswith("pretrained:"):
      if spec[len("pretrained:"):] not in shipped:
        raise flags.ValidationError(
            f"unknown pretrained optimizer {spec[len('pretrained:'):]!r}; accepted: "
            f"{', '.join(shipped) or 'none are shipped'}")
    elif not os.path.isdir(spec) and len(specs) > 1:
      raise flags.ValidationError(
          f"unknown optimizer {spec!r} in --optimizer; accepted: "
          f"{', '.join(builtin_names.HAND_DESIGNED)}, pretrained:NAME, pretrained:* or an "
          "exported optimizer's folder")
  expanded = sum(([f"pretrained:{n}" for n in shipped] if spec == "pretrained:*" else [spec]
                  for spec in specs), [])
  repeated = sorted({v for v in expanded if expanded.count(v) > 1})
  if repeated:
    raise flags.ValidationError(f"--optimizer lists {', '.join(repeated)} more than once; give "
                                "each optimizer once (pretrained:* includes every shipped one)")
  if "pretrained:*" in specs and not shipped:
    raise flags.ValidationError("pretrained:* names every shipped learned optimizer, and this "
                                "installation ships none")
  return True


flags.register_validator("optimizer", _check_optimizers)


def comparing() -> bool:
  return "," in _OPTIMIZER.value or _OPTIMIZER.value.strip() == "pretrained:*"


def config_from_flags():
  """The `multiseed.EvaluateConfig` of the command line."""
  from flatl2o.compare import multiseed  # pylint: disable=g-import-not-at-top  (imports JAX)
  return multiseed.EvaluateConfig(
      task=_TASK.value, dataset=_DATASET.value, data_dir=_DATA_DIR.value,
      optimizer=_OPTIMIZER.value, learning_rate=_LEARNING_RATE.value,
      num_steps=_NUM_STEPS.value, batch_size=_BATCH_SIZE.value,
      eval_every=_EVAL_EVERY.value, seeds=tuple(int(s) for s in _SEEDS.value),
      out_dir=_OUT_DIR.value, landscape=_LANDSCAPE.value)


def compare_main():
  from flatl2o.compare import paired as compare  # pylint: disable=g-import-not-at-top  (imports JAX)
  if _LANDSCAPE.value:
    raise ValueError("--landscape is for one optimizer, not a comparison")
  config = compare.CompareConfig(
      task=_TASK.value, dataset=_DATASET.value, data_dir=_DATA_DIR.value,
      optimizers=compare.expand(_specs(_OPTIMIZER.value)), num_steps=_NUM_STEPS.value,
      batch_size=_BATCH_SIZE.value, eval_every=_EVAL_EVERY.value,
      seeds=tuple(int(s) for s in _SEEDS.value), out_dir=_OUT_DIR.value,
      learning_rate=_LEARNING_RATE.value)
  summary = compare.compare(config, log=logging.info)
  print(compare.table(summary))
  out_dir = summary["config"]["out_dir"]
  figure = ", curves.png" if os.path.exists(os.path.join(out_dir, "curves.png")) else ""
  print(f"wrote {out_dir}/table.md, summary.json, metrics.jsonl{figure}")


def main(argv):
  del argv
  _cli.check_output_folder("--out_dir", _OUT_DIR.value or os.path.join("runs", "evaluate"))
  if comparing():
    compare_main()
    return
  config = config_from_flags()
  from flatl2o import report  # pylint: disable=g-import-not-at-top
  from flatl2o.compare import multiseed  # pylint: disable=g-import-not-at-top
  summary = multiseed.evaluate(config, log=logging.info)
  shown = [m for m in ("train_loss", "test_accuracy", "test_loss", "validation_accuracy",
                       "test_distance_to_optimum", "hessian_trace", "top_eigenvalue",
                       "local_entropy_gap")
           if m in summary["over_seeds"]]
  print(f"{config.task} on {summary['dataset_name']}, {config.num_steps} steps, "
        f"{len(config.seeds)} seeds (mean ± 95% interval over seeds)")
  out_dir = summary["config"]["out_dir"]
  print(report.format_table({summary["label"]: summary["over_seeds"]}, shown))
  figures = [name for name in ("curves.png",) + multiseed.LANDSCAPE_FILES
             if os.path.exists(os.path.join(out_dir, name))]
  print(f"wrote {out_dir}/metrics.jsonl, summary.json" + "".join(f", {n}" for n in figures))


if __name__ == "__main__":
  _cli.run(main)
