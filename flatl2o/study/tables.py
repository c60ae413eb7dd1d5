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
  """How the tables name a contender group: the model, with its term and coefficient.

  Args:
    model: the model (or baseline) name.
    kind: the regularizer's term; None or "none" for an unregularized contender.
    coefficient: the term's coefficient; unused without a term.

  Returns:
    "MODEL", or "MODEL + KIND (COEFFICIENT)".
  """
  return model if kind in (None, "none") else f"{model} + {kind} ({coefficient:g})"


def by_seed(cells: list[dict], metric: str, matched: bool = False) -> dict[Any, dict[int, float]]:
  """meta_seed -> test_seed -> value (NaN where a matched level was not reached).

  Args:
    cells: meta-test cells, each with `meta_seed`, `test_seed` and `metric` (or `matched`).
    metric: the key of the value.
    matched: read the value at matched training loss (the cell's `matched`) instead of at
      the end of the run.

  Returns:
    The values as floats (NaN for a missing one).
  """
  out: dict[Any, dict[int, float]] = {}
  for c in cells:
    value = c[metric] if not matched else (c["matched"].get(metric) if c["matched"]["step"]
                                           is not None else float("nan"))
    out.setdefault(c["meta_seed"], {})[c["test_seed"]] = (float(value) if value is not None
                                                          else float("nan"))
  return out


def _nan_mean(values: list[float]) -> float:
  """`np.nanmean`, NaN without numpy's warning when every value is NaN."""
  return float(np.nanmean(values)) if not np.all(np.isnan(values)) else float("nan")


def units(seeds: dict[Any, dict[int, float]]) -> list[float]:
  """The values an interval is over.

  Per-meta-seed means when there are several meta seeds, else the test seeds' values.

  Args:
    seeds: meta_seed -> test_seed -> value, as from `by_seed`.

  Returns:
    The values (the per-seed means leave NaNs out); empty when `seeds` is.
  """
  if len(seeds) > 1:
    return [_nan_mean(list(v.values())) for v in seeds.values()]
  return list(next(iter(seeds.values())).values()) if seeds else []


def over_seeds(seeds: dict[Any, dict[int, float]]) -> dict[str, float]:
  """Mean and 95% t-interval over `units` (non-finite ones left out).

  Args:
    seeds: meta_seed -> test_seed -> value, as from `by_seed`.

  Returns:
    `report.summarize`'s statistics, or {"mean": NaN, "ci95": NaN, "n": 0} with no finite
    value.
  """
  values = [v for v in units(seeds) if np.isfinite(v)]
  return report.summarize(values) if values else dict(_EMPTY)


def paired(a: dict[Any, dict[int, float]], b: dict[Any, dict[int, float]]) -> dict[str, float]:
  """a - b paired on meta seed and test seed; interval as in `over_seeds`.

  Args:
    a: meta_seed -> test_seed -> value, as from `by_seed`.
    b: the same of the other contender.

  Returns:
    The statistics of the differences, as `over_seeds` returns them (empty statistics when
    no pair is shared).
  """
  diffs = {m: {t: a[m][t] - b[m][t] for t in a[m] if t in b.get(m, {})} for m in a if m in b}
  diffs = {m: d for m, d in diffs.items() if d}
  return over_seeds(diffs) if diffs else dict(_EMPTY)


def summarize(results: dict) -> dict:
  """Rows of the main table: optimizee -> group label -> statistics.

  Args:
    results: the study's results (`cells`, `contenders`, `same_budget`); contenders that
      are seen-only or controls are left out.

  Returns:
    Per optimizee and group: `over_seeds` of each metric, at the end and at matched loss
    (`*_matched`), `collapsed_runs`, `matched_reached`, `runs`, `meta_steps`, and for a
    regularized group its paired test accuracy minus plain's (also at the same budget on
    the seen optimizee); empty for a sweep-only run.
  """
  if "cells" not in results:  # a sweep-only run
    return {}
  contenders = results["contenders"]
  same_budget = results["same_budget"]
  main = {n for n, c in contenders.items() if not c.get("seen_only") and not c.get("control")}
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
                  for m in ("hessian_trace", "top_eigenvalue", "entropy_gap")})
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
                "are expected. Run the default preset (primary) for results.")


def banner(results: dict) -> str | None:
  """The line that heads every output of a smoke run (None for other presets).

  Args:
    results: the study's results; its "config" names the preset.

  Returns:
    `SMOKE_BANNER`, or None.
  """
  return SMOKE_BANNER if results.get("config", {}).get("preset") == "smoke" else None


DESIGN = """The primary question, fixed before the run: for each learned optimizer of the
study (L2O-DM in the default one) meta-trained on `mlp_sigmoid` (digits), the
difference in test accuracy at the primary meta-test horizon (the first of the
preset's horizons) between the regularized optimizer (Hessian-trace term; local-entropy term; each
coefficient chosen on validation by the sweep) and the plain one selected within
the same meta-step budget (plain's best validated meta-parameters up to the
meta-step the regularized run was selected at), paired by meta-training seed and
test seed. Beside it, the difference to plain at its full budget (separates a
flatness effect from an early-stopping one). Secondary: the same on unseen
optimizees (`mlp_relu`, `mlp_deep`), also in training loss there (optimizer
generalization), and at the preset's further horizons. Each figure is
the mean over meta-training seeds of the per-seed mean paired difference over
test seeds; its interval is the 95% t-interval over meta-training seeds (the
unit of replication), its p-value the two-sided t-test against 0, Holm-adjusted
within the primary family and, apart, over the secondaries; MDE is the smallest
true difference that test finds with 80% power given the observed spread."""


def _number(x, fmt: str = "+.4f") -> str:
  return format(x, fmt) if x is not None and np.isfinite(x) else "—"


def comparison_table(entries: list[dict]) -> list[str]:
  """Every comparison of results.json's "primary" list, one row each.

  Args:
    entries: the comparisons, as `analysis.comparisons` returns them.

  Returns:
    The Markdown table's lines: header, separator, then one row per comparison.
  """
  lines = ["| family | model + term (coef.) | optimizee | control | metric | horizon | "
           "difference | 95% interval | p | p (Holm) | MDE (80%) | meta seeds | "
           "selected meta-steps | control's |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for e in entries:
    lo, hi = e["ci95"]
    horizon = e.get("horizon")
    lines.append(
        f"| {e['family']} | {e['model']} + {e['regularizer']} ({e['coefficient']:g}) | "
        f"{e['optimizee']} | {e['control'].replace('_', ' ')} | {e['metric']} | "
        f"{'—' if horizon is None else horizon} | "
        f"{_number(e['difference'])} | [{_number(lo)}, {_number(hi)}] | "
        f"{_number(e['p_value'], '.3g')} | {_number(e['p_holm'], '.3g')} | "
        f"{_number(e['mde'], '.4f')} | {e['meta_seeds']} | "
        f"{', '.join(map(str, e['selected_meta_steps']))} | "
        f"{', '.join(map(str, e['control_meta_steps']))} |")
  return lines


def sweep_table(points: list[dict]) -> list[str]:
  """The sweep's points as a table, one row each.

  Args:
    points: sweep points, as `sweep.point` returns them.

  Returns:
    The Markdown table's lines: header, separator, then one row per point.
  """
  lines = ["| model | term | coefficient | validation acc. (mean) | per seed | collapsed | "
           "grad ratio | selected meta-steps |", "|---|---|---|---|---|---|---|---|"]
  for p in points:
    accs = ", ".join(_number(a, ".4f") for a in p["validation_accuracies"])
    lines.append(f"| {p.get('model', 'l2o_dm')} | {p['regularizer']} | {p['coefficient']:g} | "
                 f"{_number(p['validation_accuracy'], '.4f')} | {accs} | "
                 f"{p['collapsed_runs']}/{p['runs']} | {_number(p['grad_ratio'], '.3g')} | "
                 f"{', '.join(_meta_step(m) for m in p['selected_meta_steps'])} |")
  return lines


def variance_table(components: list[dict]) -> list[str]:
  """results.json's "variance" as a table, one row per model x quantity.

  Args:
    components: as `analysis.variance` returns them.

  Returns:
    The Markdown table's lines (none when there are no components).
  """
  if not components:
    return []
  lines = ["| model | quantity | horizon | between meta seeds (sd) | between test seeds (sd) | "
           "meta-seed share of a seed mean's variance | meta x test seeds |",
           "|---|---|---|---|---|---|---|"]
  for v in components:
    what = ("plain's test accuracy" if v["quantity"] == "test_accuracy" else
            f"{v['regularizer']} − same-budget plain")
    sd = lambda x: _number(np.sqrt(x) if np.isfinite(x) else x, ".4f")
    lines.append(f"| {v['model']} | {what} | {v['horizon']} | {sd(v['between_meta_seeds'])} | "
                 f"{sd(v['between_test_seeds'])} | {_number(v['meta_share'], '.2f')} | "
                 f"{v['meta_seeds']} x {v['test_seeds']} |")
  return lines


def coefficient_line(results: dict) -> str:
  """The coefficients of a study, per model when they differ between models.

  Args:
    results: a study's results (`coefficients`, optionally `model_coefficients`).

  Returns:
    "hessian 1, entropy 1000" or "l2o_dm: hessian 1, entropy 1000; rnnprop: ...".
  """
  every = results.get("model_coefficients") or {}
  same = all(c == results["coefficients"] for c in every.values())
  text = lambda c: ", ".join(f"{k} {v:g}" for k, v in c.items()) or "none"
  if same or len(every) < 2:
    return text(results["coefficients"])
  return "; ".join(f"{m}: {text(c)}" for m, c in every.items())


VARIANCE_NOTE = ("Variance components on the seen optimizee at the primary horizon (balanced "
                 "one-way random effects over meta seeds, `flatl2o.study.analysis."
                 "variance_components`), as standard deviations; the share is that of the "
                 "meta seed means' variance which more test seeds cannot remove.")


def _sweep_only_lines(results: dict) -> list[str]:
  """results.md of a sweep-only run (`--preset=sweep`), after the banner."""
  models = ", ".join(results.get("model_coefficients") or ["l2o_dm"])
  return [f"## Coefficient sweep ({models} on mlp_sigmoid)", "", *_sweep_lines(results), "",
          *sweep_table(results["sweep"]), "",
          "Validation accuracy: each seed's best validated accuracy at the meta-training "
          "horizon; grad ratio: ||meta-gradient of the term|| / ||meta-gradient of the loss"
          "|| at the selected meta-parameters (mean over seeds). To use these coefficients: "
          "--sweep_file=THIS_FOLDER/results.json (or ship it as flatl2o/study/sweep.json, "
          "or with other models' sweeps as sweep_models.json: scripts/ship_sweep.py)."]


def _sweep_lines(results: dict) -> list[str]:
  """Each model's and term's sweep summary, one list item each."""
  from flatl2o.study import sweep as sweep_lib  # pylint: disable=g-import-not-at-top
  by_model = results.get("sweep_models") or {"l2o_dm": results.get("sweep_terms", {})}
  several = len(by_model) > 1
  return [f"- {m + ' ' if several else ''}{sweep_lib.summary_line(t)}"
          for m, terms in by_model.items() for t in terms.values()]


def _meta_step(step: int) -> str:
  """A selected meta-step; a run with none (every validation collapsed) says so."""
  return str(step) if step >= 0 else "collapsed"


def answer(results: dict, table: dict | None = None) -> str:
  """What a terminal shows at the end of a study: its answer, not the whole results.md.

  Args:
    results: a study's results (`flatl2o.study.run`).
    table: unused (the same arguments as `markdown`).

  Returns:
    The smoke banner (if any), then each primary difference in one sentence (a
    sweep: each term's summary line and the chosen coefficients).
  """
  del table
  from flatl2o.study import analysis  # pylint: disable=g-import-not-at-top
  lines = [banner(results).replace("**", "")] if banner(results) is not None else []
  if results.get("config", {}).get("settings", {}).get("sweep_only"):
    lines += [line[2:] for line in _sweep_lines(results)]
    lines.append("coefficients chosen: " + coefficient_line(results))
  else:
    found = analysis.answer_lines(results.get("primary", []))
    lines += ["Answer:", *(line.replace("**", "") for line in found)] if found else [
        "Answer: no primary comparison could be made (every regularized run collapsed?)"]
  return "\n".join(lines)


def markdown(results: dict, table: dict) -> str:
  """results.md: the answer first, the design, every comparison, the tables per optimizee.

  Then flatness against generalization, the sweep. A smoke run's begins with
  `SMOKE_BANNER`.

  Args:
    results: a study's results (`flatl2o.study.run`); a sweep-only run gets only its sweep.
    table: the main table, as `summarize` returns it.

  Returns:
    The Markdown, ending in a newline.
  """
  from flatl2o.study import analysis  # pylint: disable=g-import-not-at-top
  lines = []
  if banner(results) is not None:
    lines += [banner(results), ""]
  settings = results.get("config", {}).get("settings", {})
  if settings.get("sweep_only"):
    return "\n".join(lines + _sweep_only_lines(results)) + "\n"
  primary = results.get("primary", [])
  lines += ["## Answer", ""]
  lines += analysis.answer_lines(primary) or ["- no primary comparison could be made (every "
                                               "regularized run collapsed?)"]
  lines += ["", "## Design", "", DESIGN, ""]
  coeffs = coefficient_line(results)
  source = results.get("sweep_source")
  lines.append(f"Coefficients chosen on validation (each model's sweep): {coeffs}"
               + (f" (shipped sweep: `{source.get('command')}`, {source.get('date')})"
                  if source else "") + ".")
  lines += ["", "## Every comparison", "", *comparison_table(primary), ""]
  if results.get("variance"):
    lines += ["## Where the spread comes from", "", VARIANCE_NOTE, "",
              *variance_table(results["variance"]), ""]
  for optimizee, rows in table.items():
    lines.append(f"### {optimizee}  (matched training loss {results['matched_levels'][optimizee]:.3g})")
    lines.append("")
    lines.append("| optimizer | train loss | test acc. | acc. − plain (paired) | acc. − plain at "
                 "same budget | trace @ matched | top eig. @ matched | entropy gap @ matched | "
                 "trace @ end | collapsed | selected meta-steps |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, r in rows.items():
      lines.append(
          f"| {label} | {_fmt(r['train_loss'])} | {_fmt(r['test_accuracy'])} | "
          f"{_fmt(r.get('test_accuracy_minus_plain'), 2)} | "
          f"{_fmt(r.get('test_accuracy_minus_plain_same_budget'), 2)} | "
          f"{_fmt(r['hessian_trace_matched'])} ({r['matched_reached']}/{r['runs']}) | "
          f"{_fmt(r['top_eigenvalue_matched'])} | {_fmt(r.get('entropy_gap_matched'))} | "
          f"{_fmt(r['hessian_trace'])} | "
          f"{r['collapsed_runs']}/{r['runs']} | {', '.join(map(str, r['meta_steps'])) or '—'} |")
    lines.append("")
  lines.append("Intervals: 95%, over meta-training seeds (of per-seed means) for learned "
               "optimizers, over test seeds for the baselines; differences are paired on meta "
               "seed and test seed.")
  lines.append("")
  correlations = results.get("correlations", [])
  if correlations:
    lines += ["## Does flatness predict generalization here?", "",
              "Spearman's rho between flatness at matched training loss and the generalization "
              "gap there (test loss − training loss), over every meta-test run that reached the "
              "level (the lowest training loss 80% of the optimizee's runs reach).", "",
              "| optimizee | flatness | rho | 95% interval | runs (reached / all) |",
              "|---|---|---|---|---|"]
    for c in correlations:
      lo, hi = c["ci95"]
      lines.append(f"| {c['optimizee']} | {c['flatness']} | {_number(c['rho'], '+.3f')} | "
                   f"[{_number(lo, '+.3f')}, {_number(hi, '+.3f')}] | "
                   f"{c['runs']} / {c['runs_in_study']} |")
    lines.append("")
  if results.get("sweep"):
    lines += ["## Coefficient sweep", ""]
    lines += _sweep_lines(results)
    lines += ["", *sweep_table(results["sweep"])]
  return "\n".join(lines) + "\n"
