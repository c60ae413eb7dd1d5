"""A study's figures (PNG, written atomically; none without matplotlib).

train_loss_curves.png (mean training loss per contender group and optimizee),
test_accuracy.png (means with 95% intervals and the seeds they are over),
trace_vs_loss.png (Hessian trace against training loss, at the end and at
matched loss) and coefficient_sweep.png (the L2O-DM sweep).
"""

from __future__ import annotations

import os

import numpy as np

from flatl2o import report
from flatl2o.study.config import SEEN
from flatl2o.study.tables import banner, by_seed, group_label, units


def figures(results: dict, table: dict, out_dir: str) -> list[str]:
  """PNG figures of the protocol; [] when matplotlib is not installed."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return []
  written = []
  optimizees = list(table)
  main = {n for n, c in results["contenders"].items() if not c.get("seen_only")}

  note = banner(results)

  def save(fig, name):
    if note is not None:  # a smoke run's figures say so first
      fig.suptitle("SMOKE RUN (--preset=smoke): these numbers mean nothing", fontsize=9,
                   color="tab:red")
      fig.tight_layout()
    path = os.path.join(out_dir, name)
    report._atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))  # pylint: disable=protected-access
    plt.close(fig)
    written.append(path)

  # Training-loss curves, one panel per optimizee.
  fig, axes = plt.subplots(1, len(optimizees), figsize=(4.2 * len(optimizees), 3.6),
                           squeeze=False)
  for ax, optimizee in zip(axes[0], optimizees):
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
  axes[0][0].set_ylabel("training loss")
  axes[0][-1].legend(fontsize=5, loc="upper right")
  save(fig, "train_loss_curves.png")

  # Test accuracy with intervals per optimizee.
  fig, axes = plt.subplots(1, len(optimizees), figsize=(4.2 * len(optimizees), 4.4),
                           squeeze=False)
  for ax, optimizee in zip(axes[0], optimizees):
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
    if points:  # accuracy lives in [0, 1]; an interval past it is cut at the frame
      ax.set_ylim(max(0.0, min(points) - 0.02), min(1.0, max(points) + 0.01))
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=90, fontsize=5)
    ax.set_title(optimizee, fontsize=9)
  axes[0][0].set_ylabel("test accuracy (mean ± 95%; dots: seeds)")
  fig.tight_layout()
  save(fig, "test_accuracy.png")

  # Hessian trace against training loss, at the end and at matched loss.
  fig, axes = plt.subplots(1, len(optimizees), figsize=(4.2 * len(optimizees), 3.6),
                           squeeze=False)
  colours = {None: "k", "none": "tab:blue", "hessian": "tab:red", "entropy": "tab:green"}
  for ax, optimizee in zip(axes[0], optimizees):
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
  axes[0][0].set_ylabel("Hessian trace")
  for kind, colour in colours.items():
    axes[0][-1].scatter([], [], c=colour, s=6, label=kind or "baseline")
  axes[0][-1].legend(fontsize=6)
  save(fig, "trace_vs_loss.png")

  # The coefficient sweep.
  sweep = [c for c in results["meta_training"].values()
           if c["model"] == "l2o_dm" and c["regularizer"] != "none" and c["meta_seed"] == 0]
  fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), squeeze=False)
  for ax, kind in zip(axes[0], ("hessian", "entropy")):
    cs = sorted((c for c in sweep if c["regularizer"] == kind), key=lambda c: c["coefficient"])
    if not cs:
      continue
    xs = [c["coefficient"] for c in cs]
    ax.plot(xs, [c["best_validation_accuracy"] for c in cs], "o-", label="validation acc.")
    test = [np.mean([r["test_accuracy"] for r in results["cells"]
                     if r["contender"] == c["name"] and r["optimizee"] == SEEN]) for c in cs]
    ax.plot(xs, test, "s--", label=f"test acc. on {SEEN}")
    for x, c in zip(xs, cs):
      if c["collapsed"]:
        ax.axvline(x, color="r", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("alpha" if kind == "hessian" else "beta")
    ax.set_title(f"L2O-DM + {kind} (red: collapsed)", fontsize=9)
    ax.legend(fontsize=6)
  save(fig, "coefficient_sweep.png")
  return written
