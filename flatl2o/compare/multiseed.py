"""One optimizer on one optimizee over several seeds, into a folder of its own.

`evaluate(EvaluateConfig(...))` trains the task once per seed (the same seeds
give every optimizer the same initialisations and batches), and writes to the
configuration's folder `metrics.jsonl` (one object per seed and evaluated
step), `summary.json` (configuration, per-seed finals with the flatness of the
final parameters, mean and 95% interval over seeds), `curves.png`, and with
`landscape` the first seed's loss-landscape slices (`landscape_1d.png`,
`landscape_2d.png`, summary.json's "landscape").

The optimizer is any spec `flatl2o.optimizers.resolve` takes. The folder is
pinned to the configuration (`folders.claim_folder`, the identity inside
summary.json): another configuration's folder is refused before anything is
written; the same configuration's results are replaced.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np

from flatl2o import checkpoints, evaluation, folders, optimizers, report, tasks
from flatl2o.resolve import (export_description, export_path, is_hand_designed,
                                        pretrained_name)

LANDSCAPE_FILES = ("landscape_1d.png", "landscape_2d.png")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
  """One multi-seed evaluation.

  Attributes:
    task: the optimizee (`flatl2o.tasks.names()`).
    dataset: its dataset (None: the task's default).
    data_dir: TFDS data_dir for prepared datasets.
    optimizer: a spec of `flatl2o.optimizers.resolve`.
    learning_rate: for hand-designed optimizers (None: the default).
    num_steps: training steps per seed.
    batch_size: minibatch size.
    eval_every: steps between validation / test evaluations.
    seeds: one run each.
    out_dir: the folder; None: runs/evaluate/TASK-DATASET-OPTIMIZER (`default_out_dir`).
    landscape: also slice the loss around the first seed's final parameters
      (extra outputs only: not part of the folder's identity).
  """

  task: str
  dataset: str | None
  data_dir: str | None
  optimizer: str
  learning_rate: float | None
  num_steps: int
  batch_size: int
  eval_every: int
  seeds: tuple[int, ...]
  out_dir: str | None
  landscape: bool = False


def optimizer_label(config: EvaluateConfig) -> str:
  """How tables and legends name the optimizer: with its learning rate, or its export.

  Args:
    config: the evaluation; its `optimizer` and `learning_rate` are read.

  Returns:
    "NAME (lr RATE)" for a hand-designed optimizer ("..., default)" when it runs at its
    default rate), "pretrained NAME", or "learned ARCHITECTURE (PATH)" for an export.
  """
  if is_hand_designed(config.optimizer):
    lr = config.learning_rate
    if lr is None:
      lr = optimizers.default_hparams(config.optimizer).get("learning_rate")
      return f"{config.optimizer} (lr {lr:g}, default)" if lr is not None else config.optimizer
    return f"{config.optimizer} (lr {lr:g})"
  if pretrained_name(config.optimizer) is not None:
    return f"pretrained {pretrained_name(config.optimizer)}"
  description = export_description(config.optimizer)
  return f"learned {description['architecture']} ({os.path.normpath(config.optimizer)})"


def default_out_dir(config: EvaluateConfig, dataset_name: str) -> str:
  """runs/evaluate/TASK-DATASET-OPTIMIZER.

  OPTIMIZER names the learning rate when one is given (`adam-lr0.1`), an export by
  architecture, folder and checksum, or `pretrained-NAME`.

  Args:
    config: the evaluation.
    dataset_name: the dataset's name, as the task reports it.

  Returns:
    The folder's path (relative), its name made safe by `folders.safe_name`.
  """
  if is_hand_designed(config.optimizer):
    name = config.optimizer + (f"-lr{config.learning_rate:g}" if config.learning_rate else "")
  elif pretrained_name(config.optimizer) is not None:
    name = f"pretrained-{pretrained_name(config.optimizer)}"
  else:
    description = export_description(config.optimizer)
    folder = os.path.basename(os.path.normpath(config.optimizer))
    name = f"{description['architecture']}-{folder}-{description['sha256'][:8]}"
  return os.path.join("runs", "evaluate",
                      folders.safe_name(f"{config.task}-{dataset_name}-{name}"))


def identity(config: EvaluateConfig) -> dict[str, Any]:
  """What the folder is pinned to.

  The configuration (not its folder or extra outputs), and a learned optimizer's export
  checksum (its contents, not only its path).

  Args:
    config: the evaluation.

  Returns:
    The configuration's fields as JSON reads them back, without `out_dir` and `landscape`,
    with `optimizer_sha256` for a learned optimizer.
  """
  out = dataclasses.asdict(config)
  out.pop("out_dir")
  out.pop("landscape")  # adds outputs, changes no result
  if not is_hand_designed(config.optimizer):
    out["optimizer_sha256"] = export_description(config.optimizer)["sha256"]
  return folders.as_json(out)  # as it reads back from summary.json


def claim(out_dir: str, wanted: dict[str, Any]) -> None:
  """Refuses a folder that holds other results (ValueError, nothing written).

  Args:
    out_dir: the evaluation's folder.
    wanted: its identity, as from `identity`, compared with summary.json's "identity".

  Raises:
    ValueError: when `out_dir` is not empty and holds no evaluate summary.json, or holds
      the results of another configuration (the message names what changed).
  """
  try:
    folders.claim_folder(out_dir, wanted, filename="summary.json", key="identity", write=False)
  except folders.FolderClaimError as e:
    if e.reason != "other":
      raise ValueError(f"--out_dir {out_dir} is not empty and holds no evaluate summary.json; "
                       "pass an empty or new folder") from None
    changes = "; ".join(f"{k} was {e.found.get(k)!r}, now {e.identity.get(k)!r}"
                        for k in folders.differing_keys(e.found, e.identity))
    raise ValueError(f"--out_dir {out_dir} holds the results of another configuration "
                     f"({changes}); pass another --out_dir (nothing was overwritten)") from None


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


def status_line(spec: str) -> str | None:
  """The one-line warning of a collapsed or undertrained export (None for any other spec).

  Args:
    spec: an optimizer spec of `flatl2o.optimizers.resolve`.

  Returns:
    The warning line, or None for a hand-designed optimizer or a trained export.
  """
  if is_hand_designed(spec):
    return None
  return checkpoints.status_warning(export_path(spec))


def seed_records(result, seed: int, eval_every: int) -> list[dict[str, Any]]:
  """metrics.jsonl's objects of one seed's run: one per evaluated step.

  Training loss: the mean minibatch loss of the `eval_every` steps before it.

  Args:
    result: the run's `evaluation.TrainResult`.
    seed: the run's seed, recorded in each object.
    eval_every: steps between evaluations: the window of the training loss.

  Returns:
    One dict per evaluated step with `seed`, `step`, `train_loss` (None at step 0) and
    `SPLIT_METRIC` for each evaluated split and metric.
  """
  records = []
  for i, step in enumerate(result.eval_steps):
    window = result.train_loss[max(0, step - eval_every):step]
    record = {"seed": seed, "step": int(step),
              "train_loss": float(window.mean()) if step else None}
    for split, metrics in result.metrics.items():
      record.update({f"{split}_{m}": float(v[i]) for m, v in metrics.items()})
    records.append(record)
  return records


TABLE_COLUMNS = (("test_accuracy", "test acc."), ("train_loss", "train loss"),
                 ("test_loss", "test loss"), ("hessian_trace", "trace"),
                 ("top_eigenvalue", "top eig."), ("local_entropy_gap", "entropy gap"),
                 ("steps_per_second", "steps/s"))


def table(summary: dict) -> str:
  """table.md of one optimizer: its final metrics, mean ± 95% interval over seeds.

  Args:
    summary: the evaluation's summary, as `evaluate` returns it.

  Returns:
    The Markdown: a line naming the task, steps and seeds, then a one-row table of the
    metrics present, ending in a newline.
  """
  config = summary["config"]
  shown = [(m, name) for m, name in TABLE_COLUMNS if m in summary["over_seeds"]]
  cells = []
  for m, _ in shown:
    s = summary["over_seeds"][m]
    cells.append("—" if not np.isfinite(s["mean"]) else f"{s['mean']:.4g}" + (
        f" ± {s['ci95']:.2g}" if np.isfinite(s["ci95"]) else ""))
  return "\n".join([
      f"{config['task']} on {summary['dataset_name']}, {config['num_steps']} steps, seeds "
      f"{', '.join(map(str, config['seeds']))} (mean ± 95% interval over seeds)", "",
      "| optimizer | " + " | ".join(name for _, name in shown) + " |",
      "|---|" + "---|" * len(shown),
      f"| {summary['label']} | " + " | ".join(cells) + " |"]) + "\n"


def evaluate(config: EvaluateConfig, log: Callable[[str], Any] = print) -> dict:
  """Runs every seed, writes the outputs, returns the summary (its "config" has the folder).

  Args:
    config: the evaluation; its `out_dir` None takes `default_out_dir`.
    log: called with each line of progress (and an export's status warning).

  Returns:
    The summary written to summary.json: `config`, `identity`, `label`, `dataset_name`,
    `final` (per seed: the last record, the final flatness, wall time and steps per
    second), `over_seeds` (metric -> mean and 95% interval) and, with `landscape`,
    `landscape` (the first seed's 1-D slice).
  """
  # Everything that can be wrong with the input fails here, before compiling.
  tx = optimizers.resolve(config.optimizer, config.learning_rate)
  warning = status_line(config.optimizer)
  if warning is not None:  # a collapsed or undertrained export: evaluated, with one line
    log(warning)
  task = tasks.get(config.task, config.dataset, data_dir=config.data_dir,
                   batch_size=config.batch_size)
  if config.out_dir is None:
    config = dataclasses.replace(config, out_dir=default_out_dir(config, task.dataset_name))
  wanted = identity(config)
  claim(config.out_dir, wanted)
  lock = folders.lock_folder(config.out_dir, "--out_dir")  # one writer; released at the end
  # Said before the first seed, which compiles (its line comes much later).
  log(f"{optimizer_label(config)} on {config.task} / {task.dataset_name}: "
      f"{len(config.seeds)} seeds x {config.num_steps} steps; the first seed compiles")

  results = []
  for i, seed in enumerate(config.seeds, start=1):
    result = evaluation.train(task, tx, config.num_steps, jax.random.key(seed),
                              eval_every=config.eval_every, flatness_at=(config.num_steps,))
    results.append(result)
    elapsed = sum(r.wall_time_s for r in results)
    log(f"seed {seed} ({i}/{len(config.seeds)}): {result.final('test')} "
        f"({result.wall_time_s:.1f} s); ETA {round(elapsed / i * (len(config.seeds) - i))}s")

  records, finals = [], []
  for seed, r in zip(config.seeds, results):
    records += seed_records(r, seed, config.eval_every)
    finals.append({**records[-1], **r.flatness[config.num_steps], "wall_time_s": r.wall_time_s,
                   "steps_per_second": r.steps_per_second})
  metric_names = [k for k in finals[0] if k not in ("seed", "step")]
  summary = {
      "config": dataclasses.asdict(config),
      "identity": wanted,
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
  report.write_text(os.path.join(config.out_dir, "table.md"), table(summary))
  report.plot_curves(os.path.join(config.out_dir, "curves.png"), {summary["label"]: results},
                     title=f"{config.task} on {summary['dataset_name']}")
  lock.release()
  return summary
