"""A study's tables: per optimizee and contender group, means with paired intervals.

`by_seed` arranges cells as meta seed -> test seed -> value; `over_seeds` is the
mean and 95% t-interval over meta-training seeds (of per-seed means) when there
are several, else over test seeds; `paired` is the same of a - b paired on meta
seed and test seed (`flatl2o.stats` holds the formulas). `summarize` builds the
main table, `markdown` renders it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flatl2o import report
from flatl2o.study.config import SEEN

METRICS = ("train_loss", "test_accuracy", "hessian_trace", "top_eigenvalue")
_EMPTY = {"mean": float("nan"), "ci95": float("nan"), "n": 0}


def group_label(model: str, kind: str | None, coefficient: float | None) -> str:
  return model if kind in (None, "none") else f"{model} + {kind} ({coefficient:g})"


def by_seed(cells: list[dict], metric: str, matched: bool = False) -> dict[Any, dict[int, float]]:
  """meta_seed -> test_seed -> value (NaN where a matched level was not reached)."""
  out: dict[Any, dict[int, float]] = {}
  for c in cells:
    value = c[metric] if not matched else (c["matched"].get(metric) if c["matched"]["step"]
                                           is not None else float("nan"))
    out.setdefault(c["meta_seed"], {})[c["test_seed"]] = float(value)
  return out


def units(seeds: dict[Any, dict[int, float]]) -> list[float]:
  """The values an interval is over: per-meta-seed means when there are several meta
  seeds, else the test seeds' values."""
  if len(seeds) > 1:
    return [float(np.nanmean(list(v.values()))) for v in seeds.values()]
  return list(next(iter(seeds.values())).values()) if seeds else []


def over_seeds(seeds: dict[Any, dict[int, float]]) -> dict[str, float]:
  """Mean and 95% t-interval over `units` (non-finite ones left out)."""
  values = [v for v in units(seeds) if np.isfinite(v)]
  return report.summarize(values) if values else dict(_EMPTY)


def paired(a: dict[Any, dict[int, float]], b: dict[Any, dict[int, float]]) -> dict[str, float]:
  """a - b paired on meta seed and test seed; interval as in `over_seeds`."""
  diffs = {m: {t: a[m][t] - b[m][t] for t in a[m] if t in b.get(m, {})} for m in a if m in b}
  diffs = {m: d for m, d in diffs.items() if d}
  return over_seeds(diffs) if diffs else dict(_EMPTY)


def summarize(results: dict) -> dict:
  """Rows of the main table: optimizee -> group label -> statistics."""
  contenders = results["contenders"]
  same_budget = results["same_budget"]
  main = {n for n, c in contenders.items() if not c.get("seen_only")}
  table: dict[str, dict[str, dict]] = {}
  for optimizee in dict.fromkeys(c["optimizee"] for c in results["cells"]):
    here = [c for c in results["cells"] if c["optimizee"] == optimizee and c["contender"] in main]
    groups: dict[str, list[dict]] = {}
    for c in here:
      groups.setdefault(group_label(c["model"], c["regularizer"], c["coefficient"]), []).append(c)
    rows = {}
    for label, cs in groups.items():
      row = {m: over_seeds(by_seed(cs, m)) for m in METRICS}
      row.update({f"{m}_matched": over_seeds(by_seed(cs, m, matched=True))
                  for m in ("hessian_trace", "top_eigenvalue")})
      row["collapsed_runs"] = sum(c["collapsed"] for c in cs)
      row["matched_reached"] = sum(c["matched"]["step"] is not None for c in cs)
      row["runs"] = len(cs)
      row["meta_steps"] = sorted({c["best_meta_step"] for c in cs if "best_meta_step" in c})
      first = cs[0]
      if first["regularizer"] not in (None, "none"):
        plain = [c for c in here if c["model"] == first["model"] and c["regularizer"] == "none"]
        row["test_accuracy_minus_plain"] = paired(by_seed(cs, "test_accuracy"),
                                                  by_seed(plain, "test_accuracy"))
        budget_names = {same_budget.get(c["contender"]) for c in cs}
        budget = [c for c in results["cells"] if c["optimizee"] == optimizee
                  and c["contender"] in budget_names]
        if budget and optimizee == SEEN:  # same-budget reruns are meta-tested there only
          row["test_accuracy_minus_plain_same_budget"] = paired(
              by_seed(cs, "test_accuracy"), by_seed(budget, "test_accuracy"))
      rows[label] = row
    table[optimizee] = rows
  return table


def _fmt(s: dict | None, digits: int = 3) -> str:
  if not s or not np.isfinite(s.get("mean", float("nan"))):
    return "—"
  ci = s.get("ci95", float("nan"))
  return f"{s['mean']:.{digits}g}" + (f" ± {ci:.2g}" if np.isfinite(ci) else "")


SMOKE_BANNER = ("**SMOKE RUN (--preset=smoke): its numbers mean nothing.** Tiny budgets that "
                "only check every code path run; low accuracies, collapses and -inf scores "
                "are expected. Run --preset=cpu for results.")


def banner(results: dict) -> str | None:
  """The line that heads every output of a smoke run (None for other presets)."""
  return SMOKE_BANNER if results.get("config", {}).get("preset") == "smoke" else None


def markdown(results: dict, table: dict) -> str:
  """results.md: the main table per optimizee, then the coefficient sweep.

  A smoke run's begins with `SMOKE_BANNER`.
  """
  lines = []
  if banner(results) is not None:
    lines += [banner(results), ""]
  coeffs = ", ".join(f"{k} {v:g}" for k, v in results["coefficients"].items())
  lines.append(f"Coefficients chosen on validation (L2O-DM sweep): {coeffs or 'none'}.")
  lines.append("")
  for optimizee, rows in table.items():
    lines.append(f"### {optimizee}  (matched training loss {results['matched_levels'][optimizee]:.3g})")
    lines.append("")
    lines.append("| optimizer | train loss | test acc. | acc. − plain (paired) | acc. − plain at "
                 "same budget | trace @ matched | top eig. @ matched | trace @ end | collapsed "
                 "| selected meta-steps |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for label, r in rows.items():
      lines.append(
          f"| {label} | {_fmt(r['train_loss'])} | {_fmt(r['test_accuracy'])} | "
          f"{_fmt(r.get('test_accuracy_minus_plain'), 2)} | "
          f"{_fmt(r.get('test_accuracy_minus_plain_same_budget'), 2)} | "
          f"{_fmt(r['hessian_trace_matched'])} ({r['matched_reached']}/{r['runs']}) | "
          f"{_fmt(r['top_eigenvalue_matched'])} | {_fmt(r['hessian_trace'])} | "
          f"{r['collapsed_runs']}/{r['runs']} | {', '.join(map(str, r['meta_steps'])) or '—'} |")
    lines.append("")
  lines.append("Intervals: 95%, over meta-training seeds (of per-seed means) for learned "
               "optimizers, over test seeds for the baselines; differences are paired on meta "
               "seed and test seed; 'same budget' is on the seen optimizee only.")
  lines.append("")
  lines.append("Sweep (L2O-DM, meta seed 0): validation accuracy at the meta-training horizon")
  lines.append("")
  lines.append("| term | coefficient | validation acc. | collapsed | selected meta-step |")
  lines.append("|---|---|---|---|---|")
  for c in results["meta_training"].values():
    if c["model"] == "l2o_dm" and c["regularizer"] != "none" and c["meta_seed"] == 0:
      lines.append(f"| {c['regularizer']} | {c['coefficient']:g} | "
                   f"{c['best_validation_accuracy']:.4f} | {c['collapsed']} | "
                   f"{c['best_meta_step']} |")
  return "\n".join(lines) + "\n"
