"""Several optimizers on one optimizee over the same seeds, compared in one folder.

`compare(CompareConfig(optimizers=("adam", "pretrained:l2o_dm", ...)))` trains
the task once per optimizer and seed (the same seeds give every optimizer the
same initialisations and batches), and writes to one folder:

- `summary.json`: the configuration, `optimizers` (the specs in the order
  given), per optimizer its per-seed finals and their means with 95% intervals
  over seeds, its paired difference to the first optimizer (seed by seed:
  mean, 95% interval, p-value and, for test accuracy, the p-value Holm-adjusted
  over the table's comparisons), its compilation time and its time per run;
  `warmup_s`, what the process spent before the first optimizer (JAX's start,
  the data on the device, the compilations every optimizer shares);
- `table.md`: the same as a table, one row per optimizer;
- `metrics.jsonl`: one object per optimizer, seed and evaluated step;
- `curves.png`: training loss and test accuracy against steps, every optimizer
  overlaid, each with its band over seeds.

Compilation is timed apart: a seed's runs after the first reuse the compiled
chunk, so `compile_s` is the first seed's time minus the median of the other
seeds' times, and `seconds_per_run` is that median; neither enters the other.
What every optimizer shares (the evaluation and flatness measures' compilation,
the process warm-up) is done once before them by a short SGD run, `warmup_s`,
so the first optimizer's `compile_s` is its own as much as the others'.
`expand` turns `pretrained:*` into every shipped optimizer and refuses an
unknown or repeated name in one line.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from flatl2o import evaluation, folders, optimizers, pretrained, report, stats, tasks
from flatl2o.resolve import export_description, is_hand_designed
from flatl2o.compare import multiseed

METRICS = ("train_loss", "test_accuracy", "test_loss", "hessian_trace", "top_eigenvalue",
           "local_entropy_gap")
PAIRED = ("test_accuracy", "train_loss", "test_loss")


@dataclasses.dataclass(frozen=True)
class CompareConfig:
  """One comparison (fields as `multiseed.EvaluateConfig`; `optimizers` in table order;
  `learning_rate`, when given, is that of the comparison's one hand-designed optimizer, e.g.
  tuned Adam against learned ones; the others run at their defaults)."""

  task: str
  dataset: str | None
  data_dir: str | None
  optimizers: tuple[str, ...]
  num_steps: int
  batch_size: int
  eval_every: int
  seeds: tuple[int, ...]
  out_dir: str | None
  learning_rate: float | None = None


def expand(specs: list[str] | tuple[str, ...]) -> tuple[str, ...]:
  """The specs with `pretrained:*` spelled out; ValueError on an empty, repeated or lone one.

  Args:
    specs: optimizer specs (`optimizers.resolve` names, `pretrained:NAME`, export paths);
      `pretrained:*` stands for every shipped learned optimizer.

  Returns:
    The specs in the order given, `pretrained:*` replaced by `pretrained:NAME` for each
    shipped one.

  Raises:
    ValueError: when `pretrained:*` is given and none is shipped, when a spec appears more
      than once, or when fewer than two remain.
  """
  out = []
  for spec in specs:
    if spec == "pretrained:*":
      shipped = pretrained.names()
      if not shipped:
        raise ValueError("pretrained:* names every shipped learned optimizer, and this "
                         "installation ships none")
      out += [f"pretrained:{n}" for n in shipped]
    else:
      out.append(spec)
  repeated = sorted({s for s in out if out.count(s) > 1})
  if repeated:
    raise ValueError(f"--optimizer lists {', '.join(repeated)} more than once; give each "
                     "optimizer once (pretrained:* already includes every shipped one)")
  if len(out) < 2:
    raise ValueError("a comparison needs at least two optimizers, e.g. "
                     "--optimizer=adam,pretrained:l2o_dm")
  return tuple(out)


def _label(spec: str, task: str, learning_rate: float | None = None) -> str:
  single = multiseed.EvaluateConfig(task=task, dataset=None, data_dir=None, optimizer=spec,
                                    learning_rate=learning_rate, num_steps=1, batch_size=1,
                                    eval_every=1, seeds=(0,), out_dir=None)
  return multiseed.optimizer_label(single)


def default_out_dir(config: CompareConfig, dataset_name: str) -> str:
  """runs/evaluate/TASK-DATASET-compare-A-B-...: one folder per list of optimizers.

  Args:
    config: the comparison; a `learning_rate` adds `-lrRATE` to its hand-designed
      optimizer's name.
    dataset_name: the dataset's name, as the task reports it.

  Returns:
    The folder's path (relative), its name made safe by `folders.safe_name`; a
    `pretrained:NAME` spec is named NAME and a path by its last component.
  """
  names = [s.split("pretrained:")[-1] if s.startswith("pretrained:") else
           os.path.basename(os.path.normpath(s)) for s in config.optimizers]
  if config.learning_rate is not None:
    names = [f"{n}-lr{config.learning_rate:g}" if is_hand_designed(s) else n
             for n, s in zip(names, config.optimizers)]
  return os.path.join("runs", "evaluate", folders.safe_name(
      f"{config.task}-{dataset_name}-compare-{'-'.join(names)}"))


def identity(config: CompareConfig) -> dict[str, Any]:
  """What defines a comparison's folder, as pinned in its summary.json.

  Args:
    config: the comparison.

  Returns:
    The configuration's fields as JSON, without `out_dir` (and without `learning_rate` when
    it is None), with `optimizer_sha256`: spec -> SHA-256 of each learned optimizer's export.
  """
  out = dataclasses.asdict(config)
  out.pop("out_dir")
  if out["learning_rate"] is None:
    out.pop("learning_rate")  # as folders made before it existed say
  out["optimizer_sha256"] = {s: export_description(s)["sha256"]
                             for s in config.optimizers if not is_hand_designed(s)}
  return folders.as_json(out)


def _timing(results) -> dict[str, float]:
  times = [r.wall_time_s for r in results]
  if len(times) < 2:
    return {"compile_s": float("nan"), "seconds_per_run": float("nan")}
  steady = float(np.median(times[1:]))
  return {"compile_s": max(times[0] - steady, 0.0), "seconds_per_run": steady}


def compare(config: CompareConfig, log: Callable[[str], Any] = print) -> dict:
  """Returns the summary after it runs every optimizer on every seed and writes the folder.

  Args:
    config: the comparison; its `learning_rate` needs one hand-designed optimizer (else ValueError).
    log: called with each line of progress.
  """
  specs = expand(config.optimizers)
  config = dataclasses.replace(config, optimizers=specs)
  rate_of = {s: config.learning_rate if is_hand_designed(s) else None for s in specs}
  hand_designed = [s for s in specs if is_hand_designed(s)]
  if config.learning_rate is not None and len(hand_designed) != 1:
    raise ValueError(f"--learning_rate in a comparison is that of its one hand-designed "
                     f"optimizer (e.g. tuned adam against learned ones); this one has "
                     f"{len(hand_designed)} ({', '.join(hand_designed) or 'none'})")
  transforms = {s: optimizers.resolve(s, rate_of[s]) for s in specs}  # bad names fail here
  for s in specs:
    warning = multiseed.status_line(s)
    if warning is not None:
      log(warning)
  task = tasks.get(config.task, config.dataset, data_dir=config.data_dir,
                   batch_size=config.batch_size)
  if config.out_dir is None:
    config = dataclasses.replace(config, out_dir=default_out_dir(config, task.dataset_name))
  wanted = identity(config)
  multiseed.claim(config.out_dir, wanted)
  lock = folders.lock_folder(config.out_dir, "--out_dir")

  log(f"{len(specs)} optimizers on {config.task} / {task.dataset_name}: "
      f"{len(config.seeds)} seeds x {config.num_steps} steps each, after a warm-up run")
  tic = time.perf_counter()
  evaluation.train(task, optimizers.get("sgd", learning_rate=1e-3), config.eval_every,
                   jax.random.key(config.seeds[0]), eval_every=config.eval_every,
                   flatness_at=(config.eval_every,))
  warmup_s = time.perf_counter() - tic
  log(f"warm-up (JAX, the data, the shared evaluation and flatness programs): "
      f"{warmup_s:.1f} s")
  runs: dict[str, list] = {}
  total = len(specs) * len(config.seeds)
  for i, spec in enumerate(specs):
    runs[spec] = []
    for j, seed in enumerate(config.seeds):
      runs[spec].append(evaluation.train(task, transforms[spec], config.num_steps,
                                         jax.random.key(seed), eval_every=config.eval_every,
                                         flatness_at=(config.num_steps,)))
      done = i * len(config.seeds) + j + 1
      log(f"{spec}, seed {seed} ({done}/{total}): {runs[spec][-1].final('test')}")

  records, finals = [], {}
  for spec in specs:
    finals[spec] = []
    for seed, r in zip(config.seeds, runs[spec]):
      records += [{"optimizer": spec, **rec}
                  for rec in multiseed.seed_records(r, seed, config.eval_every)]
      finals[spec].append({**records[-1], **r.flatness[config.num_steps]})
  first = specs[0]
  per_optimizer = {}
  for spec in specs:
    names = [m for m in METRICS if m in finals[spec][0]]
    entry = {"label": _label(spec, config.task, rate_of[spec]), "final": finals[spec],
             "over_seeds": {m: report.summarize([f[m] for f in finals[spec]]) for m in names},
             **_timing(runs[spec])}
    if spec != first:
      entry["minus_first"] = {
          m: stats.paired_difference([f[m] for f in finals[spec]], [f[m] for f in finals[first]])
          for m in PAIRED if m in finals[spec][0] and m in finals[first][0]}
    per_optimizer[spec] = entry
  holm_adjust([per_optimizer[s]["minus_first"]["test_accuracy"] for s in specs[1:]
               if "test_accuracy" in per_optimizer[s].get("minus_first", {})])
  summary = {"config": dataclasses.asdict(config), "identity": wanted,
             "dataset_name": task.dataset_name, "optimizers": list(specs),
             "per_optimizer": per_optimizer, "warmup_s": warmup_s}
  report.write_jsonl(os.path.join(config.out_dir, "metrics.jsonl"), records)
  report.write_json(os.path.join(config.out_dir, "summary.json"), summary)
  report.write_text(os.path.join(config.out_dir, "table.md"), table(summary))
  report.plot_curves(os.path.join(config.out_dir, "curves.png"),
                     {per_optimizer[s]["label"]: runs[s] for s in specs},
                     title=f"{config.task} on {task.dataset_name}")
  lock.release()
  return summary


def holm_adjust(differences: list[dict]) -> None:
  """Adds `p_holm` to each paired difference: Holm over those with a finite p (NaN else).

  Args:
    differences: paired differences (dicts with `p`), changed in place.
  """
  tested = [d for d in differences if np.isfinite(d["p"])]
  adjusted = stats.holm([d["p"] for d in tested])["adjusted"] if tested else []
  for d in differences:
    d["p_holm"] = float("nan")
  for d, q in zip(tested, adjusted):
    d["p_holm"] = q


def _p(value: float | None) -> str:
  return "—" if value is None or not np.isfinite(value) else f"{value:.3g}"


def _cell(s: dict | None, digits: int = 4) -> str:
  if not s or not np.isfinite(s.get("mean", np.nan)):
    return "—"
  ci = s.get("ci95", np.nan)
  return f"{s['mean']:.{digits}g}" + (f" ± {ci:.2g}" if np.isfinite(ci) else "")


def table(summary: dict) -> str:
  """table.md: one row per optimizer, the paired difference to the first beside it.

  Args:
    summary: a comparison's summary, as `compare` returns it.

  Returns:
    The Markdown: a line naming the task, steps and seeds, then the table, ending in a
    newline.
  """
  specs = summary["optimizers"]
  first = summary["per_optimizer"][specs[0]]["label"]
  config = summary["config"]
  compared = len(specs) - 1
  lines = [f"{config['task']} on {summary['dataset_name']}, {config['num_steps']} steps, "
           f"seeds {', '.join(map(str, config['seeds']))} (mean ± 95% interval over seeds; "
           f"differences paired seed by seed against {first}; p: paired t-test, and Holm-"
           f"adjusted over the table's {compared} comparison{'s' * (compared != 1)})", "",
           "| optimizer | test acc. | train loss | test loss | test acc. − first | p | "
           "p (Holm) | trace | top eig. | entropy gap | compile s | s per run |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for spec in specs:
    e = summary["per_optimizer"][spec]
    o = e["over_seeds"]
    diff = e.get("minus_first", {}).get("test_accuracy")
    diff_cell = "—" if diff is None else (f"{diff['mean']:+.4f} ± {diff['ci95']:.2g}"
                                          if np.isfinite(diff["ci95"]) else f"{diff['mean']:+.4f}")
    p = "—" if diff is None else _p(diff["p"])
    p_holm = "—" if diff is None else _p(diff.get("p_holm"))
    lines.append(f"| {e['label']} | {_cell(o.get('test_accuracy'))} | "
                 f"{_cell(o.get('train_loss'))} | {_cell(o.get('test_loss'))} | {diff_cell} | "
                 f"{p} | {p_holm} | {_cell(o.get('hessian_trace'), 3)} | {_cell(o.get('top_eigenvalue'), 3)}"
                 f" | {_cell(o.get('local_entropy_gap'), 3)} | {e['compile_s']:.1f} | "
                 f"{e['seconds_per_run']:.2f} |")
  return "\n".join(lines) + "\n"
