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
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import jax
from absl import flags, logging

import flatl2o
from experiments import _cli
from flatl2o import evaluation, optimizers, report, tasks

_TASK = flags.DEFINE_enum("task", "mlp_sigmoid", tasks.names(), "Optimizee.")
_DATASET = flags.DEFINE_string(
    "dataset", None, "Dataset: digits (default; embedded), mnist, fashion_mnist, cifar10 "
    "(TFDS, prepared), or idx:PATH. The quadratic task takes none.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir for prepared datasets.")
_OPTIMIZER = flags.DEFINE_string(
    "optimizer", "adam", f"Optimizer name ({', '.join(optimizers.names())}), the path of "
    "an exported learned optimizer (e.g. RUN_DIR/optimizer), or pretrained:NAME, a learned "
    f"optimizer shipped with flatl2o ({', '.join(flatl2o.pretrained.names()) or 'none'}).")
_LEARNING_RATE = flags.DEFINE_float(
    "learning_rate", None, "Learning rate; default: the optimizer's documented default.")
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


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
  task: str
  dataset: str | None
  data_dir: str | None
  optimizer: str
  learning_rate: float | None
  num_steps: int
  batch_size: int
  eval_every: int
  seeds: tuple[int, ...]
  out_dir: str | None  # None: runs/evaluate/TASK-DATASET-OPTIMIZER (see the module docstring)
  landscape: bool = False  # extra outputs only: not part of the folder's identity


def config_from_flags() -> EvaluateConfig:
  return EvaluateConfig(
      task=_TASK.value, dataset=_DATASET.value, data_dir=_DATA_DIR.value,
      optimizer=_OPTIMIZER.value, learning_rate=_LEARNING_RATE.value,
      num_steps=_NUM_STEPS.value, batch_size=_BATCH_SIZE.value,
      eval_every=_EVAL_EVERY.value, seeds=tuple(int(s) for s in _SEEDS.value),
      out_dir=_OUT_DIR.value, landscape=_LANDSCAPE.value)


def _is_hand_designed(config: EvaluateConfig) -> bool:
  return config.optimizer in optimizers.names()


def optimizer_label(config: EvaluateConfig) -> str:
  """How tables and legends name the optimizer: with its learning rate, or its export."""
  if _is_hand_designed(config):
    lr = config.learning_rate
    if lr is None:
      lr = optimizers.default_hparams(config.optimizer).get("learning_rate")
      return f"{config.optimizer} (lr {lr:g}, default)" if lr is not None else config.optimizer
    return f"{config.optimizer} (lr {lr:g})"
  if _pretrained_name(config.optimizer) is not None:
    return f"pretrained {_pretrained_name(config.optimizer)}"
  meta = _export_description(config.optimizer)
  return f"learned {meta['architecture']} ({os.path.normpath(config.optimizer)})"


PRETRAINED_PREFIX = "pretrained:"


def _pretrained_name(optimizer: str) -> str | None:
  """NAME of `pretrained:NAME`, else None."""
  return optimizer[len(PRETRAINED_PREFIX):] if optimizer.startswith(PRETRAINED_PREFIX) else None


def _export_path(optimizer: str) -> str:
  """The export folder of --optimizer: its path, or a pretrained optimizer's package folder."""
  name = _pretrained_name(optimizer)
  return optimizer if name is None else flatl2o.pretrained.path(name)


def _export_description(optimizer: str) -> dict:
  with open(os.path.join(_export_path(optimizer), "optimizer.json")) as f:
    return json.load(f)


def default_out_dir(config: EvaluateConfig, dataset_name: str) -> str:
  if _is_hand_designed(config):
    name = config.optimizer + (f"-lr{config.learning_rate:g}" if config.learning_rate else "")
  elif _pretrained_name(config.optimizer) is not None:
    name = f"pretrained-{_pretrained_name(config.optimizer)}"
  else:
    meta = _export_description(config.optimizer)
    folder = os.path.basename(os.path.normpath(config.optimizer))
    name = f"{meta['architecture']}-{folder}-{meta['sha256'][:8]}"
  return os.path.join("runs", "evaluate", _cli.safe_name(f"{config.task}-{dataset_name}-{name}"))


def _identity(config: EvaluateConfig) -> dict:
  identity = dataclasses.asdict(config)
  identity.pop("out_dir")
  identity.pop("landscape")  # adds outputs, changes no result
  if not _is_hand_designed(config):  # the export's contents, not only its path
    identity["optimizer_sha256"] = _export_description(config.optimizer)["sha256"]
  return json.loads(json.dumps(identity))  # as it reads back from summary.json


def _check_out_dir(out_dir: str, identity: dict) -> None:
  """Refuses a folder that holds other results (ValueError: exit 2, nothing written)."""
  summary_path = os.path.join(out_dir, "summary.json")
  if not os.path.exists(out_dir) or not os.listdir(out_dir):
    return
  try:
    with open(summary_path) as f:
      previous = json.load(f).get("identity")
  except (OSError, ValueError, AttributeError):
    previous = None
  if previous is None:
    raise ValueError(f"--out_dir {out_dir} is not empty and holds no evaluate summary.json; "
                     "pass an empty or new folder")
  if previous != identity:
    order = [k for k in identity if k in previous] + sorted(set(previous) ^ set(identity))
    changes = "; ".join(f"{k} was {previous.get(k)!r}, now {identity.get(k)!r}"
                        for k in order if previous.get(k) != identity.get(k))
    raise ValueError(f"--out_dir {out_dir} holds the results of another configuration "
                     f"({changes}); pass another --out_dir (nothing was overwritten)")


def resolve_optimizer(name_or_path: str, learning_rate: float | None):
  """A hand-designed optimizer by name, an exported learned optimizer by path, or pretrained:NAME."""
  if name_or_path in optimizers.names():
    return optimizers.get(name_or_path, learning_rate=learning_rate)
  pretrained_name = _pretrained_name(name_or_path)
  if pretrained_name is not None:
    tx = flatl2o.pretrained.load(pretrained_name)  # unknown NAME: one line listing the names
    if learning_rate is not None:
      raise ValueError("--learning_rate applies to hand-designed optimizers only, not to "
                       f"the pretrained optimizer {pretrained_name}")
    return tx
  if os.sep in name_or_path or os.path.exists(name_or_path):
    if learning_rate is not None:
      raise ValueError("--learning_rate applies to hand-designed optimizers only, not to "
                       f"the learned optimizer {name_or_path}")
    return flatl2o.load_optimizer(name_or_path)
  hint = (f"; {name_or_path!r} is an architecture: meta-train it with experiments.meta_train "
          "and pass RUN_DIR/optimizer" if name_or_path in optimizers.learned_names() else "")
  if name_or_path in flatl2o.pretrained.names():
    hint += f"; the shipped pretrained one is --optimizer={PRETRAINED_PREFIX}{name_or_path}"
  raise ValueError(f"unknown optimizer {name_or_path!r}; accepted: "
                   f"{', '.join(optimizers.names())}, the path of an exported optimizer, or "
                   f"{PRETRAINED_PREFIX}NAME ({', '.join(flatl2o.pretrained.names())}){hint}")


LANDSCAPE_FILES = ("landscape_1d.png", "landscape_2d.png")


def _landscape(config: EvaluateConfig, task, seed: int, result, label: str) -> dict:
  """Slices around `result.params` (seed `seed`), writes their PNGs, returns the 1-D values."""
  slices = evaluation.loss_landscape(task, result.params,
                                     jax.random.fold_in(jax.random.key(seed), 0x1A5D))
  title = f"{config.task} on {task.dataset_name}: seed {seed}, step {config.num_steps}"
  report.plot_landscape_1d(os.path.join(config.out_dir, LANDSCAPE_FILES[0]), slices["alphas"],
                           {label: slices["loss_1d"]}, title=title)
  report.plot_landscape_2d(os.path.join(config.out_dir, LANDSCAPE_FILES[1]),
                           slices["alphas_2d"], slices["betas_2d"], {label: slices["loss_2d"]},
                           title=title)
  return {"seed": seed, "step": config.num_steps, "alphas": slices["alphas"].tolist(),
          "loss": slices["loss_1d"].tolist()}


def evaluate(config: EvaluateConfig) -> dict:
  """Runs every seed, writes the outputs, returns the summary."""
  # Everything that can be wrong with the input fails here, before compiling.
  tx = resolve_optimizer(config.optimizer, config.learning_rate)
  task = tasks.get(config.task, config.dataset, data_dir=config.data_dir,
                   batch_size=config.batch_size)
  if config.out_dir is None:
    config = dataclasses.replace(config, out_dir=default_out_dir(config, task.dataset_name))
  identity = _identity(config)
  _check_out_dir(config.out_dir, identity)

  results = []
  for i, seed in enumerate(config.seeds, start=1):
    result = evaluation.train(task, tx, config.num_steps, jax.random.key(seed),
                              eval_every=config.eval_every, flatness_at=(config.num_steps,))
    results.append(result)
    elapsed = sum(r.wall_time_s for r in results)
    logging.info("seed %d (%d/%d): %s (%.1f s); ETA %ds", seed, i, len(config.seeds),
                 result.final("test"), result.wall_time_s,
                 round(elapsed / i * (len(config.seeds) - i)))

  records, finals = [], []
  for seed, r in zip(config.seeds, results):
    for i, step in enumerate(r.eval_steps):
      window = r.train_loss[max(0, step - config.eval_every):step]
      record = {"seed": seed, "step": int(step),
                "train_loss": float(window.mean()) if step else None}
      for split, metrics in r.metrics.items():
        record.update({f"{split}_{m}": float(v[i]) for m, v in metrics.items()})
      records.append(record)
    finals.append({**records[-1], **r.flatness[config.num_steps], "wall_time_s": r.wall_time_s,
                   "steps_per_second": r.steps_per_second})
  metric_names = [k for k in finals[0] if k not in ("seed", "step")]
  summary = {
      "config": dataclasses.asdict(config),
      "identity": identity,
      "label": optimizer_label(config),
      "dataset_name": task.dataset_name,
      "final": finals,
      "over_seeds": {m: report.summarize([f[m] for f in finals]) for m in metric_names},
  }
  if config.landscape:
    summary["landscape"] = _landscape(config, task, config.seeds[0], results[0],
                                      summary["label"])
  else:  # a rerun of the same configuration leaves no slices its summary lacks
    for name in LANDSCAPE_FILES:
      if os.path.exists(os.path.join(config.out_dir, name)):
        os.remove(os.path.join(config.out_dir, name))
  report.write_jsonl(os.path.join(config.out_dir, "metrics.jsonl"), records)
  report.write_json(os.path.join(config.out_dir, "summary.json"), summary)
  report.plot_curves(os.path.join(config.out_dir, "curves.png"), {summary["label"]: results},
                     title=f"{config.task} on {summary['dataset_name']}")
  return summary


def main(argv):
  del argv
  config = config_from_flags()
  summary = evaluate(config)
  shown = [m for m in ("train_loss", "test_accuracy", "test_loss", "validation_accuracy",
                       "test_distance_to_optimum", "hessian_trace", "top_eigenvalue",
                       "local_entropy_gap")
           if m in summary["over_seeds"]]
  print(f"{config.task} on {summary['dataset_name']}, {config.num_steps} steps, "
        f"{len(config.seeds)} seeds (mean ± 95% interval over seeds)")
  out_dir = summary["config"]["out_dir"]
  print(report.format_table({summary["label"]: summary["over_seeds"]}, shown))
  figures = [name for name in ("curves.png",) + LANDSCAPE_FILES
             if os.path.exists(os.path.join(out_dir, name))]
  print(f"wrote {out_dir}/metrics.jsonl, summary.json" + "".join(f", {n}" for n in figures))


if __name__ == "__main__":
  _cli.run(main)
