"""A study's figures (PNG, written atomically; none without matplotlib).

train_loss_curves.png (mean training loss per contender group and optimizee),
test_accuracy.png (means with 95% intervals and the seeds they are over),
trace_vs_loss.png (Hessian trace against training loss, at the end and at
matched loss), coefficient_sweep.png (each model's sweep: validation accuracy,
collapse and the gradient ratio against the coefficient) and
flatness_vs_gap.png (flatness at matched loss against the generalization gap).
"""

from __future__ import annotations

import collections
import os

import numpy as np

from flatl2o import atomic_files
from flatl2o.meta import terms
from flatl2o.study.tables import banner, by_seed, group_label, units


def figures(results: dict, table: dict, out_dir: str) -> list[str]:
  """PNG figures of the study into `out_dir`.

  Args:
    results: what `flatl2o.study.run` returned.
    table: `flatl2o.study.summarize(results)` (optimizee -> contender -> metrics).
    out_dir: the folder (written atomically, file by file).

  Returns:
    The paths written: train_loss_curves.png, test_accuracy.png, trace_vs_loss.png
    (with meta-tests), coefficient_sweep.png (with a sweep), flatness_vs_gap.png
    (with matched-loss flatness); [] when matplotlib is not installed.
  """
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return []
  written = []
  note = banner(results)

  def save(fig, name):
    if note is not None:  # a smoke run's figures say so first
      fig.suptitle("SMOKE RUN (--preset=smoke): these numbers mean nothing", fontsize=9,
                   color="tab:red")
      fig.tight_layout()
    path = os.path.join(out_dir, name)
    atomic_files.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    written.append(path)

  optimizees = list(table)
  main = {n for n, c in results.get("contenders", {}).items()
          if not c.get("seen_only") and not c.get("control")}
  colours = collections.defaultdict(lambda: "tab:purple",  # a user's term
                                    {None: "k", "none": "tab:blue", "hessian": "tab:red",
                                     "entropy": "tab:green"})
  if optimizees:  # (a sweep-only run has none: its sweep figure alone)
    save(_train_loss_curves(plt, results, optimizees, main), "train_loss_curves.png")
    save(_test_accuracy(plt, results, table, main), "test_accuracy.png")
    save(_trace_vs_loss(plt, results, optimizees, main, colours), "trace_vs_loss.png")
  fig = _coefficient_sweep(plt, results.get("sweep") or [])
  if fig is not None:
    save(fig, "coefficient_sweep.png")
  fig = _flatness_vs_gap(plt, results, colours)
  if fig is not None:
    save(fig, "flatness_vs_gap.png")
  return written


def _panels(plt, count: int, height: float = 3.6):
  fig, axes = plt.subplots(1, count, figsize=(4.2 * count, height), squeeze=False)
  return fig, axes[0]


def _train_loss_curves(plt, results, optimizees, main):
  """Training-loss curves (mean over seeds), one panel per optimizee."""
  fig, axes = _panels(plt, len(optimizees))
  for ax, optimizee in zip(axes, optimizees):
    groups: dict[str, list[dict]] = {}
    for c in results["cells"]:
      if c["optimizee"] == optimizee and c["contender"] in main:
        groups.setdefault(group_label(c["model"], c["regularizer"], c["coefficient"]),
                          []).append(c)
    for label, cs in groups.items():
      steps = cs[0]["eval_steps"][1:]
      mean = np.nanmean([c["train_loss_curve"][1:] for c in cs], axis=0)
      ax.plot(steps, mean, label=label, lw=1.2,
              ls="-" if cs[0]["regularizer"] in (None, "none") else "--")
    ax.set_yscale("log")
    ax.set_title(optimizee, fontsize=9)
    ax.set_xlabel("inner step")
  axes[0].set_ylabel("training loss")
  axes[-1].legend(fontsize=5, loc="upper right")
  return fig


def _test_accuracy(plt, results, table, main):
  """Test accuracy with intervals per optimizee, and the seeds the interval is over."""
  fig, axes = _panels(plt, len(table), height=4.4)
  for ax, optimizee in zip(axes, table):
    rows = table[optimizee]
    labels = list(rows)
    means = [rows[k]["test_accuracy"]["mean"] for k in labels]
    cis = [np.nan_to_num(rows[k]["test_accuracy"].get("ci95", 0.0)) for k in labels]
    ax.errorbar(range(len(labels)), means, yerr=cis, fmt="o", ms=3, capsize=2, zorder=2)
    # The points the interval is over: per meta-training seed (its mean over test seeds),
    # or per test seed for a baseline. With two meta seeds the interval is wide (t = 12.7).
    points = []
    for i, label in enumerate(labels):
      cs = [c for c in results["cells"] if c["optimizee"] == optimizee and c["contender"] in main
            and group_label(c["model"], c["regularizer"], c["coefficient"]) == label]
      ys = units(by_seed(cs, "test_accuracy"))
      ax.scatter([i] * len(ys), ys, s=5, c="tab:orange", zorder=3)
      points += [y for y in ys if np.isfinite(y)]
    # Every dot and every whole interval in the frame (a t-interval may pass 1).
    ends = points + [m - c for m, c in zip(means, cis) if np.isfinite(m)] + [
        m + c for m, c in zip(means, cis) if np.isfinite(m)]
    if ends:
      low, high = min(ends), max(ends)
      margin = 0.05 * max(high - low, 1e-3)
      ax.set_ylim(low - margin, high + margin)
    ax.set_xticks(range(len(labels)))
    if len(labels) <= 6:  # a few: horizontal, the term on a line of its own
      ax.set_xticklabels([label.replace(" + ", "\n+ ") for label in labels], fontsize=7)
    else:
      ax.set_xticklabels(labels, rotation=40, ha="right", fontsize=6)
    ax.set_title(optimizee, fontsize=9)
  axes[0].set_ylabel("test accuracy (mean ± 95%; dots: seeds)")
  fig.tight_layout()
  return fig


def _trace_vs_loss(plt, results, optimizees, main, colours):
  """Hessian trace against training loss, at the end and at matched loss."""
  fig, axes = _panels(plt, len(optimizees))
  for ax, optimizee in zip(axes, optimizees):
    for c in results["cells"]:
      if c["optimizee"] != optimizee or c["contender"] not in main:
        continue
      ax.scatter(c["train_loss"], c["hessian_trace"], s=6, c=colours[c["regularizer"]])
      if c["matched"]["step"] is not None:
        ax.scatter(c["matched"]["train_loss"], c["matched"]["hessian_trace"], s=10,
                   marker="x", c=colours[c["regularizer"]])
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_title(f"{optimizee} (x: matched loss)", fontsize=9)
    ax.set_xlabel("training loss")
  axes[0].set_ylabel("Hessian trace")
  for kind, colour in colours.items():
    axes[-1].scatter([], [], c=colour, s=6, label=kind or "baseline")
  axes[-1].legend(fontsize=6)
  return fig


def _coefficient_sweep(plt, points):
  """The coefficient sweep, one panel per model x term: validation accuracy (each seed and the
  mean), collapse, and the flatness term's share of the meta-gradient, against the
  coefficient (None: no sweep)."""
  model_of = lambda p: p.get("model", "l2o_dm")  # sweeps before 2026-12-08: L2O-DM's
  models = list(dict.fromkeys(model_of(p) for p in points))
  kinds = list(dict.fromkeys(p["regularizer"] for p in points if p["regularizer"] != "none"))
  if not kinds:
    return None
  fig, axes = plt.subplots(len(models), len(kinds), figsize=(4.6 * len(kinds),
                                                             3.6 * len(models)), squeeze=False)
  for row, model in zip(axes, models):
    plain = next((p for p in points if p["regularizer"] == "none" and model_of(p) == model),
                 None)
    for ax, kind in zip(row, kinds):
      ps = sorted((p for p in points if p["regularizer"] == kind and model_of(p) == model),
                  key=lambda p: p["coefficient"])
      xs = [p["coefficient"] for p in ps]
      ax.plot(xs, [p["validation_accuracy"] for p in ps], "o-", label="validation acc. (mean)")
      for p in ps:
        accs = [a for a in p["validation_accuracies"] if np.isfinite(a)]
        ax.scatter([p["coefficient"]] * len(accs), accs, s=6, c="tab:orange", zorder=3)
        if p["collapsed_runs"]:
          ax.axvline(p["coefficient"], color="r", lw=0.6 + p["collapsed"],
                     ls="-" if p["collapsed"] else ":")
      if plain is not None and np.isfinite(plain["validation_accuracy"]):
        ax.axhline(plain["validation_accuracy"], color="k", lw=0.6, ls="--",
                   label="plain (no term)")
      ax.set_xscale("log")
      ax.set_xlabel(terms.coefficient_field(kind))
      ax.set_ylabel("best validation accuracy")
      ax.set_title(f"{model} + {kind} (red: collapsed, dotted: some seeds)", fontsize=8)
      ratio_ax = ax.twinx()
      ratio_ax.plot(xs, [p["grad_ratio"] for p in ps], "^:", c="tab:purple", ms=3)
      ratio_ax.set_yscale("log")
      ratio_ax.set_ylabel("|grad flat| / |grad loss|", color="tab:purple", fontsize=7)
      ax.legend(fontsize=6, loc="lower left")
  fig.tight_layout()
  return fig


def _flatness_vs_gap(plt, results, colours):
  """Does flatness at matched loss predict the generalization gap? (None: nothing matched.)"""
  matched = [c for c in results.get("cells", []) if c["matched"].get("step") is not None
             and "generalization_gap" in c["matched"]]
  if not matched:
    return None
  measures = (("hessian_trace", "Hessian trace"), ("top_eigenvalue", "top eigenvalue"),
              ("entropy_gap", "local-entropy gap"))
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), squeeze=False)
  rhos = {(r["optimizee"], r["flatness"]): r for r in results.get("correlations", [])}
  marker_of = {o: m for o, m in zip(dict.fromkeys(c["optimizee"] for c in matched), "os^vD")}
  for ax, (key, label) in zip(axes[0], measures):
    for optimizee, marker in marker_of.items():
      cs = [c for c in matched if c["optimizee"] == optimizee]
      rho = rhos.get((optimizee, key), {}).get("rho", float("nan"))
      ax.scatter([c["matched"][key] for c in cs],
                 [c["matched"]["generalization_gap"] for c in cs], s=7, marker=marker,
                 c=[colours[c["regularizer"]] for c in cs])
      ax.scatter([], [], s=7, marker=marker, c="gray", label=f"{optimizee} (rho {rho:.2f})")
    for kind, colour in colours.items():
      ax.scatter([], [], s=7, c=colour, label=kind or "baseline")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlabel(f"{label} at matched training loss")
    ax.legend(fontsize=6)
  axes[0][0].set_ylabel("test loss - training loss")
  fig.tight_layout()
  return fig
