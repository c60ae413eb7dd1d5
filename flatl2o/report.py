"""Summaries, tables and figures of training runs.

Files are written with `flatl2o.atomic_files` (whole or not at all); its names
(`write_json`, `WriteError`, ...) stay importable from here.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from flatl2o import stats
from flatl2o.atomic_files import (WriteError, atomic_write, umask_mode, write_failed,  # pylint: disable=unused-import
                                  write_folder, write_json, write_jsonl, write_text)

_atomic_write = atomic_write  # the name older callers used


def summarize(values: Sequence[float]) -> dict[str, float]:
  """Mean, standard deviation, 95% t-interval half-width, min, max and count.

  Unlike `stats.interval`, a non-finite value is not left out: a seed that
  diverged makes the mean NaN (or infinite), as a run report should show.

  Args:
    values: one number per unit (seed).

  Returns:
    {"mean", "std", "ci95" (the `stats.interval` half width; NaN below two units or
    with a non-finite value), "min", "max", "n"}.
  """
  v = np.asarray(values, np.float64)
  n = int(v.size)
  std = float(v.std(ddof=1)) if n > 1 else float("nan")
  finite = bool(np.all(np.isfinite(v)))
  half = stats.interval(v)["ci95"] if finite else float("nan")
  return {"mean": float(v.mean()), "std": std, "ci95": half, "min": float(v.min()),
          "max": float(v.max()), "n": n}


def format_table(rows: Mapping[str, Mapping[str, Mapping[str, float]]],
                 columns: Sequence[str]) -> str:
  """A plain-text table: one row per entry of `rows`, cells 'mean ± ci95'.

  Args:
    rows: row label -> column name -> `summarize` output.
    columns: the columns to show, in order.

  Returns:
    The table as lines joined by newlines: a header of the column names, a rule of dashes,
    then one left-aligned line per row; a cell is 'mean ± ci95', the mean alone when ci95 is
    NaN, or '-' when the row has no such column.
  """
  def cell(s):
    if s is None:
      return "-"
    if math.isnan(s["ci95"]):
      return f"{s['mean']:.4g}"
    return f"{s['mean']:.4g} ± {s['ci95']:.2g}"

  header = [""] + list(columns)
  body = [[label] + [cell(r.get(c)) for c in columns] for label, r in rows.items()]
  widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
  fmt = lambda line: "  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip()
  rule = "  ".join("-" * w for w in widths)
  return "\n".join([fmt(header), rule] + [fmt(line) for line in body])


def zoomed_limits(series: Sequence[np.ndarray], pad: float = 0.1) -> tuple[float, float]:
  """y-limits spanning every value after the first evaluation (step 0), padded by `pad`.

  The untrained model's accuracy (~0.1) would otherwise set the axis, and the
  differences that matter (a few tenths of a percent) would vanish.

  Args:
    series: the curves to show, each an array of values at the evaluation steps along its
      last axis (any leading axes, e.g. seeds); the first entry along that axis is left out.
    pad: the margin added below and above, as a fraction of the values' span (a span under
      1e-3 counts as 1e-3).

  Returns:
    `(low, high)` spanning every finite value after step 0, padded; (0.0, 1.0) when there is
    none.
  """
  later = np.concatenate([np.ravel(np.asarray(v, np.float64)[..., 1:]) for v in series])
  later = later[np.isfinite(later)]
  if later.size == 0:
    return 0.0, 1.0
  lo, hi = float(later.min()), float(later.max())
  margin = max(hi - lo, 1e-3) * pad
  return lo - margin, hi + margin


def plot_curves(path: str, curves: Mapping[str, Sequence[Any]], title: str = "",
                horizon: int | None = None) -> bool:
  """Writes a PNG: training loss and test accuracy (or loss) against steps.

  Args:
    path: where the PNG goes.
    curves: label -> list of `evaluation.TrainResult` (one per seed); each label
      is drawn as its mean over seeds with a min-max band.
    title: figure title.
    horizon: a step to mark with a dashed line (the meta-training horizon).

  Returns:
    False (and writes nothing) when matplotlib is not installed.
  """
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
  metric_series = []
  num_seeds = 0
  for label, results in curves.items():
    num_seeds = max(num_seeds, len(results))
    losses = np.stack([_smooth(r.train_loss) for r in results])
    steps = np.arange(1, losses.shape[1] + 1)
    line, = ax_loss.plot(steps, losses.mean(0), label=label)
    ax_loss.fill_between(steps, losses.min(0), losses.max(0), color=line.get_color(), alpha=0.2)
    test = results[0].metrics.get("test", {})
    metric = "accuracy" if "accuracy" in test else "loss"
    values = np.stack([r.metrics["test"][metric] for r in results])
    metric_series.append(values)
    ax_metric.plot(results[0].eval_steps, values.mean(0), marker="o", ms=3, label=label,
                   color=line.get_color())
    ax_metric.fill_between(results[0].eval_steps, values.min(0), values.max(0),
                           color=line.get_color(), alpha=0.2)
    ax_metric.set_ylabel(f"test {metric}")
  ax_loss.set(xlabel="step", ylabel="training loss (smoothed)", yscale="log")
  ax_metric.set(xlabel="step", title=f"mean over {num_seeds} seeds; bands: min to max",
                ylim=zoomed_limits(metric_series) if metric_series else None)
  for ax in (ax_loss, ax_metric):
    if horizon is not None:
      ax.axvline(horizon, color="gray", linestyle="--", linewidth=1,
                 label="meta-training horizon" if ax is ax_loss else None)
    ax.grid(alpha=0.3)
    ax.legend()
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
  plt.close(fig)
  return True


def _smooth(x: np.ndarray, window: int = 20) -> np.ndarray:
  """Trailing moving average (shorter at the start), same length as `x`."""
  c = np.cumsum(np.insert(np.asarray(x, np.float64), 0, 0.0))
  idx = np.arange(1, len(x) + 1)
  lo = np.maximum(0, idx - window)
  return (c[idx] - c[lo]) / (idx - lo)


def _pyplot():
  """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return plt


def _save_png(path: str, fig, plt) -> None:
  fig.tight_layout()
  _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
  plt.close(fig)


def _wide_positive(arrays: Sequence[np.ndarray]) -> bool:
  """Whether the finite values are all positive and span over a factor of 10 (log axes)."""
  finite = [a[np.isfinite(a)] for a in arrays]
  finite = np.concatenate(finite) if finite else np.zeros(0)
  return finite.size > 0 and finite.min() > 0 and finite.max() > 10 * finite.min()


def plot_landscape_1d(path: str, alphas: Sequence[float], curves: Mapping[str, Sequence[float]],
                      title: str = "") -> bool:
  """Writes a PNG of 1-D loss slices f(x + a d) against a (`flatness.loss_slice_1d`).

  Args:
    path: where the PNG goes.
    alphas: `[A]` the slice's coefficients, shared by every curve.
    curves: label -> `[A]` loss values.
    title: figure title.

  Returns:
    False (and writes nothing) when matplotlib is not installed.
  """
  alphas = np.asarray(alphas, np.float64)
  values = {label: np.asarray(v, np.float64) for label, v in curves.items()}
  for label, v in values.items():
    if v.shape != alphas.shape:
      raise ValueError(f"curve {label!r} has shape {v.shape}, alphas {alphas.shape}")
  plt = _pyplot()
  if plt is None:
    return False
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, v in values.items():
    ax.plot(alphas, v, label=label)
  ax.set(xlabel="alpha (filter-normalised direction)", ylabel="loss",
         yscale="log" if _wide_positive(list(values.values())) else "linear",
         title=title or None)
  ax.axvline(0.0, color="gray", linestyle="--", linewidth=1)
  ax.grid(alpha=0.3)
  if values:
    ax.legend()
  _save_png(path, fig, plt)
  return True


def plot_landscape_2d(path: str, alphas: Sequence[float], betas: Sequence[float],
                      surfaces: Mapping[str, Any], title: str = "", num_levels: int = 20) -> bool:
  """Writes a PNG of 2-D loss slices: one contour panel per label, the same levels in each.

  Args:
    path: where the PNG goes.
    alphas: `[A]` coefficients of the first direction (the x-axis).
    betas: `[B]` coefficients of the second direction (the y-axis).
    surfaces: label -> `[A, B]` losses, row i at alphas[i] (`flatness.loss_slice_2d`).
    title: figure title.
    num_levels: contour levels, log-spaced when every loss is positive and they
      span over a factor of 10.

  Returns:
    False (and writes nothing) when matplotlib is not installed.
  """
  alphas = np.asarray(alphas, np.float64)
  betas = np.asarray(betas, np.float64)
  values = {label: np.asarray(v, np.float64) for label, v in surfaces.items()}
  for label, v in values.items():
    if v.shape != (alphas.size, betas.size):
      raise ValueError(f"surface {label!r} has shape {v.shape}, expected "
                       f"(len(alphas), len(betas)) = {(alphas.size, betas.size)}")
  if not values:
    raise ValueError("surfaces is empty; pass at least one label -> [A, B] array")
  finite = np.concatenate([v[np.isfinite(v)] for v in values.values()])
  if finite.size == 0:
    raise ValueError("every surface value is non-finite; nothing to draw")
  lo, hi = float(finite.min()), float(finite.max())
  if hi <= lo:
    hi = lo + max(abs(lo), 1.0) * 1e-6
  log = _wide_positive([finite])
  levels = np.geomspace(lo, hi, num_levels) if log else np.linspace(lo, hi, num_levels)
  plt = _pyplot()
  if plt is None:
    return False
  from matplotlib import colors  # pylint: disable=g-import-not-at-top
  norm = colors.LogNorm(lo, hi) if log else colors.Normalize(lo, hi)
  fig, axes = plt.subplots(1, len(values), figsize=(4.5 * len(values) + 1.5, 4), squeeze=False,
                           layout="constrained")
  contour = None
  for ax, (label, v) in zip(axes[0], values.items()):
    # contour wants z[y, x]: y runs over betas, x over alphas.
    contour = ax.contour(alphas, betas, v.T, levels=levels, norm=norm, cmap="viridis")
    ax.plot([0.0], [0.0], marker="x", color="red")
    ax.set(xlabel="alpha (direction 1)", ylabel="beta (direction 2)", title=label,
           aspect="equal")
  fig.colorbar(contour, ax=axes[0].tolist(), label="loss", format="%.3g")
  if title:
    fig.suptitle(title)
  _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
  plt.close(fig)
  return True


def slq_density(grid: Sequence[float], ritz_values: Sequence[float], weights: Sequence[float],
                sigma: float) -> np.ndarray:
  """sum_k w_k N(t; theta_k, sigma^2) at each t of `grid`: a smoothed SLQ eigenvalue density.

  Weights are normalised to sum 1, so the density integrates to 1.

  Args:
    grid: the eigenvalues t at which to evaluate the density.
    ritz_values: the SLQ nodes theta_k (flattened; e.g. `flatness.hessian_spectrum`).
    weights: their weights w_k, as many as `ritz_values` (flattened).
    sigma: the standard deviation of each Gaussian, a positive finite number.

  Returns:
    A float64 array shaped like `grid`: the density at each t.

  Raises:
    ValueError: `ritz_values` and `weights` differ in size, or `sigma` is not a positive
      finite number.
  """
  theta = np.ravel(np.asarray(ritz_values, np.float64))
  w = np.ravel(np.asarray(weights, np.float64))
  if theta.shape != w.shape:
    raise ValueError(f"ritz_values has {theta.size} entries, weights {w.size}")
  if not (sigma > 0 and math.isfinite(sigma)):
    raise ValueError(f"sigma must be a positive number, got {sigma!r}")
  w = w / w.sum()
  t = np.asarray(grid, np.float64)[:, None]
  return (w * np.exp(-0.5 * ((t - theta) / sigma) ** 2)).sum(1) / (sigma * math.sqrt(2 * math.pi))


def plot_spectrum(path: str, spectra: Mapping[str, tuple[Any, Any]], title: str = "",
                  sigma: float | None = None) -> bool:
  """Writes a PNG of Hessian eigenvalue densities (log-scaled) from SLQ nodes.

  Args:
    path: where the PNG goes.
    spectra: label -> `(ritz_values, weights)` (`flatness.hessian_spectrum`).
    title: figure title.
    sigma: the Gaussian smoothing width; default 1% of the range of every
      Ritz value shown.

  Returns:
    False (and writes nothing) when matplotlib is not installed.
  """
  nodes = {label: (np.ravel(np.asarray(r, np.float64)), np.ravel(np.asarray(w, np.float64)))
           for label, (r, w) in spectra.items()}
  if not nodes:
    raise ValueError("spectra is empty; pass at least one label -> (ritz_values, weights)")
  every = np.concatenate([r for r, _ in nodes.values()])
  lo, hi = float(every.min()), float(every.max())
  width = max(hi - lo, 1e-6 * max(abs(lo), abs(hi), 1.0))
  sigma = 0.01 * width if sigma is None else sigma
  grid = np.linspace(lo - 0.05 * width - 3 * sigma, hi + 0.05 * width + 3 * sigma, 1000)
  densities = {label: slq_density(grid, r, w, sigma) for label, (r, w) in nodes.items()}
  plt = _pyplot()
  if plt is None:
    return False
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, density in densities.items():
    ax.plot(grid, np.maximum(density, 1e-12), label=label)
  top = max(float(d.max()) for d in densities.values())
  ax.set(xlabel="eigenvalue", ylabel="density (Gaussian-smoothed SLQ)", yscale="log",
         ylim=(max(top * 1e-8, 1e-12), top * 2), title=title or None)
  ax.grid(alpha=0.3)
  ax.legend()
  _save_png(path, fig, plt)
  return True
