"""The study's answers: the primary question, its controls and secondaries, and whether
flatness predicts generalization at all.

The primary question (fixed before any run; docs/results.md, "Design"): for
each model of the study (L2O-DM in the default one) meta-trained on the seen
MLP, the difference in test accuracy at the primary horizon (the preset's first;
further horizons are read from the same runs' evaluations) between the regularized optimizer (each flatness term, its
coefficient chosen on validation) and the plain one selected within the same
meta-step budget (`same_budget`: plain's best validated meta-parameters up to
the meta-step the regularized run was selected at), paired by meta-training
seed and test seed. Beside it, the difference to plain at its full budget
(`full_budget`), which separates a flatness effect from an early-stopping one.

Every difference is computed the same way: for each meta-training seed m the
mean over test seeds t of a(m, t) - b(m, t) (the runs of both on the same test
seed), d_m; the figure is the mean of the d_m, its interval the 95% t-interval
over the meta seeds, its p-value the two-sided one-sample t-test of the d_m
against 0, and its minimum detectable effect the smallest true difference that
test would find with 80% power given the observed spread of the d_m
(`flatl2o.stats.minimum_detectable_effect`). The unit of replication is the
meta-training run, never the test seed. Holm's correction is applied within
the primary family (every model x term, same budget, seen MLP, primary horizon)
and, apart, over every other comparison (the secondaries: the full-budget
control, unseen optimizees, training loss there, later horizons).

`variance` splits the spread of plain's accuracy and of each primary difference
into its part between meta-training seeds and its part between test seeds.

`correlations` asks whether flatness predicts generalization here: over every
meta-test run of the study (every optimizer, model, seed) on an optimizee,
Spearman's rank correlation between a flatness measure at matched training
loss (Hessian trace, top eigenvalue, local-entropy gap) and the
generalization gap there (test loss - training loss), with its interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flatl2o import stats
from flatl2o.study.config import SEEN

CONTROLS = ("same_budget", "full_budget")
FLATNESS = ("hessian_trace", "top_eigenvalue", "entropy_gap")


CURVES = {"test_accuracy": "test_accuracy_curve", "train_loss": "train_loss_curve",
          "test_loss": "test_loss_curve"}


def at_horizon(cell: dict, metric: str, horizon: int | None = None) -> float:
  """A meta-test run's `metric` after `horizon` training steps, read from its evaluations.

  Args:
    cell: a meta-test run (`metric`, and for an earlier horizon `eval_steps` and the
      metric's curve, e.g. `test_accuracy_curve`).
    metric: test_accuracy, train_loss (smoothed, as the final one) or test_loss.
    horizon: training steps; None or the run's last evaluation: the final value.

  Returns:
    The value (NaN when the run has no evaluation at `horizon`).
  """
  steps = cell.get("eval_steps")
  if horizon is None or not steps or horizon == steps[-1]:
    return float(cell[metric])
  if horizon not in steps or CURVES[metric] not in cell:
    return float("nan")
  return float(cell[CURVES[metric]][steps.index(horizon)])


def per_seed_differences(a: list[dict], b: list[dict], metric: str,
                         horizon: int | None = None) -> dict[int, float]:
  """Per meta seed, the mean over the shared test seeds of a - b.

  a - b pairs are left out where either is not finite.

  Args:
    a: cells (dicts with `meta_seed`, `test_seed` and `metric`) of one optimizer.
    b: cells of the same form of the other, paired with `a` by (meta_seed, test_seed).
    metric: the key of the cells whose values are differenced.
    horizon: the training steps the values are read at (`at_horizon`; None: the end).

  Returns:
    meta seed -> mean over shared test seeds of a - b, in order of meta seed; a meta seed
    with no finite pair is absent.
  """
  b_at = {(c["meta_seed"], c["test_seed"]): at_horizon(c, metric, horizon) for c in b}
  diffs: dict[int, list[float]] = {}
  for c in a:
    other, mine = b_at.get((c["meta_seed"], c["test_seed"])), at_horizon(c, metric, horizon)
    if other is not None and np.isfinite(mine) and np.isfinite(other):
      diffs.setdefault(c["meta_seed"], []).append(mine - float(other))
  return {m: float(np.mean(v)) for m, v in sorted(diffs.items())}


def variance_components(values: dict[tuple[int, int], float]) -> dict[str, Any]:
  """Between- and within-meta-seed variance of values indexed by (meta seed, test seed).

  The balanced one-way random-effects model y(m, t) = mu + a_m + e_mt over the M meta seeds
  that have every one of the T test seeds finite: with MSB = T / (M - 1) sum_m (ybar_m -
  ybar)^2 and MSW = sum (y - ybar_m)^2 / (M (T - 1)),
    between_test_seeds = MSW,   between_meta_seeds = max(0, (MSB - MSW) / T),
  and `meta_share` = between_meta_seeds / (between_meta_seeds + between_test_seeds / T),
  the share of the meta seed means' variance (what a paired comparison's interval is made
  of) that more test seeds cannot remove.

  Args:
    values: (meta seed, test seed) -> value.

  Returns:
    {"between_meta_seeds", "between_test_seeds", "meta_share", "meta_seeds", "test_seeds"};
    the figures NaN below 2 meta seeds or 2 test seeds.
  """
  tests = sorted({t for _, t in values})
  rows = {}
  for (m, t), v in values.items():
    rows.setdefault(m, {})[t] = v
  y = np.array([[rows[m][t] for t in tests] for m in sorted(rows)
                if all(np.isfinite(rows[m].get(t, np.nan)) for t in tests)], np.float64)
  out = {"between_meta_seeds": float("nan"), "between_test_seeds": float("nan"),
         "meta_share": float("nan"), "meta_seeds": int(y.shape[0]), "test_seeds": len(tests)}
  if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 2:
    return out
  n_meta, n_test = y.shape
  means = y.mean(axis=1)
  msb = n_test * float(np.sum((means - means.mean()) ** 2)) / (n_meta - 1)
  msw = float(np.sum((y - means[:, None]) ** 2)) / (n_meta * (n_test - 1))
  between = max(0.0, (msb - msw) / n_test)
  total = between + msw / n_test
  out.update(between_meta_seeds=between, between_test_seeds=msw,
             meta_share=between / total if total > 0 else float("nan"))
  return out


def difference(per_seed: dict[int, float]) -> dict[str, Any]:
  """Mean over meta seeds of the per-seed differences, with interval, p-value and MDE.

  Args:
    per_seed: meta seed -> difference, as from `per_seed_differences`.

  Returns:
    A dict with `difference` (the mean; NaN if there are no seeds), `ci95` ([low, high], the
    95% t-interval), `p_value`, `mde`, `meta_seeds` (the count) and `per_seed` (keyed by the
    seed as a string); `ci95`, `p_value` and `mde` stay NaN with fewer than two seeds.
  """
  d = list(per_seed.values())
  n = len(d)
  out = {"difference": float(np.mean(d)) if d else float("nan"),
         "ci95": [float("nan"), float("nan")], "p_value": float("nan"), "mde": float("nan"),
         "meta_seeds": n, "per_seed": {str(k): v for k, v in per_seed.items()}}
  if n >= 2:
    test = stats.paired_difference(d, [0.0] * n)
    out["ci95"] = [test["mean"] - test["ci95"], test["mean"] + test["ci95"]]
    out["p_value"] = test["p"] if np.isfinite(test["p"]) else (1.0 if test["mean"] == 0 else 0.0)
    out["mde"] = stats.minimum_detectable_effect(float(np.std(d, ddof=1)), n)
  return out


def regularizer_label(kind: str, coefficient: float | None) -> str:
  """As `flatl2o.study.commands.regularizer_label` (which imports JAX; this module does not).

  Args:
    kind: the flatness term, or "none" for the plain optimizer.
    coefficient: the term's coefficient; unused when `kind` is "none".

  Returns:
    "none", or "<kind>-<coefficient>" with the coefficient formatted by `:g`.
  """
  return "none" if kind == "none" else f"{kind}-{coefficient:g}"


def _contender(model: str, kind: str, coefficient, seed: int) -> str:
  return f"{model}-{regularizer_label(kind, coefficient)}-s{seed}"


def horizons_of(results: dict) -> tuple[int, ...]:
  """The horizons a study compares at (its settings' `horizons`, else its `test_horizon`).

  Args:
    results: the study's results, with `config.settings` (older ones: no `horizons`).

  Returns:
    The horizons, the primary family's first; `(None,)` (the end of each run) when the
    results name no test horizon.
  """
  settings = results.get("config", {}).get("settings", {})
  return tuple(settings.get("horizons") or ()) or (settings.get("test_horizon"),)


def model_coefficients(results: dict) -> dict[str, dict[str, float]]:
  """Each regularized model's coefficients in a study's results.

  Args:
    results: the study's results, with `contenders`, `coefficients` and (since
      2026-12-08) `model_coefficients`.

  Returns:
    Model -> term -> coefficient, for each model with a regularized contender; older
    results (no `model_coefficients`) give every model their `coefficients`.
  """
  models = dict.fromkeys(c["model"] for c in results["contenders"].values()
                         if c.get("regularizer") is not None)
  every = results.get("model_coefficients") or {}
  return {m: every.get(m, results["coefficients"]) for m in models}


def _by_contender(cells: list[dict]) -> dict[tuple[str, str], list[dict]]:
  """(contender, optimizee) -> its meta-test runs."""
  by = {}
  for c in cells:
    by.setdefault((c["contender"], c["optimizee"]), []).append(c)
  return by


def _pairs(results, by, model, kind, coefficient, optimizee, control, seeds):
  """The cells of a regularized contender and of its control, seed by seed (`comparisons`)."""
  contenders, same_budget = results["contenders"], results.get("same_budget", {})
  reg_cells, control_cells, steps, control_steps, unpaired = [], [], [], [], {}
  for seed in seeds:
    name = _contender(model, kind, coefficient, seed)
    if control == "full_budget":
      other = _contender(model, "none", None, seed)
    else:
      other = same_budget.get(f"{model}-{regularizer_label(kind, coefficient)}-s{seed}")
    here, there = by.get((name, optimizee)), by.get((other, optimizee))
    if not here or not there:
      unpaired[str(seed)] = results.get("unpaired", {}).get(name) or (
          f"no meta-test on {optimizee} of {name if not here else other or 'a control'}")
      continue
    reg_cells += here
    control_cells += there
    steps.append(contenders[name]["best_meta_step"])
    control_steps.append(contenders[other]["best_meta_step"])
  return reg_cells, control_cells, steps, control_steps, unpaired


def comparisons(results: dict) -> list[dict[str, Any]]:
  """The `primary` list of results.json.

  Every regularized model x term x optimizee x control x metric x horizon, with its
  statistics (`difference`) and Holm-adjusted p-value. The primary family: every model x
  term on the seen optimizee, same budget, test accuracy, at the first horizon.

  Args:
    results: the study's results, with `cells`, `coefficients` (or `model_coefficients`)
      and `contenders`, and optionally `same_budget` (regularized contender -> its
      same-budget plain control), `unpaired` (contender -> why it has no pair) and
      `config.settings` (the horizons: `horizons_of`).

  Returns:
    One dict per comparison with `model`, `regularizer`, `coefficient`, `optimizee`,
    `control`, `metric`, `horizon` (training steps of the meta-test, None for older
    results), the fields of `difference`, `selected_meta_steps`, `control_meta_steps`,
    `unpaired` (seed -> reason it was left out), `family` ("primary" or "secondary") and
    `p_holm` (Holm-adjusted within its family; NaN where the p-value is).
  """
  cells, contenders = results["cells"], results["contenders"]
  horizons = horizons_of(results)
  optimizees = list(dict.fromkeys(c["optimizee"] for c in cells))
  seeds = sorted({c["meta_seed"] for c in contenders.values()
                  if c.get("regularizer") not in (None,) and c.get("meta_seed") is not None})
  by = _by_contender(cells)
  entries = []
  for model, coefficients in model_coefficients(results).items():
    for kind, coefficient in coefficients.items():
      for optimizee in optimizees:
        metrics = ["test_accuracy"] + (["train_loss"] if optimizee != SEEN else [])
        for control in CONTROLS:
          reg_cells, control_cells, steps, control_steps, unpaired = _pairs(
              results, by, model, kind, coefficient, optimizee, control, seeds)
          if not reg_cells:
            continue  # no seed of this model x term was meta-tested here (results.md says so)
          for horizon in horizons:
            for metric in metrics:
              entry = {"model": model, "regularizer": kind, "coefficient": coefficient,
                       "optimizee": optimizee, "control": control, "metric": metric,
                       "horizon": horizon, **difference(per_seed_differences(
                           reg_cells, control_cells, metric, horizon)),
                       "selected_meta_steps": steps, "control_meta_steps": control_steps,
                       "unpaired": unpaired}
              entry["family"] = ("primary" if (optimizee == SEEN and control == "same_budget"
                                               and metric == "test_accuracy"
                                               and horizon == horizons[0]) else "secondary")
              entries.append(entry)
  for family in ("primary", "secondary"):
    members = [e for e in entries if e["family"] == family and np.isfinite(e["p_value"])]
    adjusted = stats.holm([e["p_value"] for e in members])["adjusted"]
    for e, q in zip(members, adjusted):
      e["p_holm"] = q
  for e in entries:
    e.setdefault("p_holm", float("nan"))
  return entries


def variance(results: dict) -> list[dict[str, Any]]:
  """results.json's `variance`: where the spread of the primary comparisons comes from.

  Per model, on the seen optimizee at the primary horizon: the variance components
  (`variance_components`) of plain's test accuracy, and of each term's paired difference to
  its same-budget control (regularized minus control, run by run).

  Args:
    results: the study's results, as for `comparisons`.

  Returns:
    One dict per model x quantity with `model`, `regularizer` ("none": plain's accuracy),
    `quantity` ("test_accuracy" or "difference_same_budget"), `horizon` and the fields of
    `variance_components`.
  """
  cells, contenders = results["cells"], results["contenders"]
  horizon = horizons_of(results)[0]
  seeds = sorted({c["meta_seed"] for c in contenders.values() if c.get("meta_seed") is not None})
  by = _by_contender(cells)
  out = []
  for model, coefficients in model_coefficients(results).items():
    plain = {(c["meta_seed"], c["test_seed"]): at_horizon(c, "test_accuracy", horizon)
             for seed in seeds for c in by.get((_contender(model, "none", None, seed), SEEN), [])}
    out.append({"model": model, "regularizer": "none", "quantity": "test_accuracy",
                "horizon": horizon, **variance_components(plain)})
    for kind, coefficient in coefficients.items():
      reg_cells, control_cells, *_ = _pairs(results, by, model, kind, coefficient, SEEN,
                                            "same_budget", seeds)
      control = {(c["meta_seed"], c["test_seed"]): at_horizon(c, "test_accuracy", horizon)
                 for c in control_cells}
      diffs = {(c["meta_seed"], c["test_seed"]): at_horizon(c, "test_accuracy", horizon)
               - control.get((c["meta_seed"], c["test_seed"]), np.nan) for c in reg_cells}
      out.append({"model": model, "regularizer": kind, "quantity": "difference_same_budget",
                  "horizon": horizon, **variance_components(diffs)})
  return out


def correlations(results: dict) -> list[dict[str, Any]]:
  """Spearman's rho between each flatness measure at matched loss and the generalization gap.

  The gap is taken there, over every meta-test run of each optimizee that reached the level.

  Args:
    results: the study's results, with `cells` (each with `optimizee` and `matched`) and
      optionally `matched_levels` (optimizee -> the matched training loss).

  Returns:
    One dict per optimizee x flatness measure with `optimizee`, `flatness`, `rho`, `ci95`
    ([low, high]), `runs` (the pairs used), `runs_in_study` and `level`.
  """
  out = []
  optimizees = list(dict.fromkeys(c["optimizee"] for c in results["cells"]))
  for optimizee in optimizees:
    runs = [c["matched"] for c in results["cells"] if c["optimizee"] == optimizee
            and c["matched"].get("step") is not None and "generalization_gap" in c["matched"]]
    total = sum(1 for c in results["cells"] if c["optimizee"] == optimizee)
    for measure in FLATNESS:
      pairs = [(r[measure], r["generalization_gap"]) for r in runs
               if np.isfinite(r.get(measure, np.nan)) and np.isfinite(r["generalization_gap"])]
      rho = stats.spearman([p[0] for p in pairs], [p[1] for p in pairs])
      out.append({"optimizee": optimizee, "flatness": measure, "rho": rho["rho"],
                  "ci95": [rho["low"], rho["high"]], "runs": rho["n"], "runs_in_study": total,
                  "level": results.get("matched_levels", {}).get(optimizee)})
  return out


def unpaired_lines(primary: list[dict]) -> list[str]:
  """A warning per primary difference that left meta-training seeds out (unpaired).

  Args:
    primary: the comparisons, as from `comparisons`; only the `primary` family is read.

  Returns:
    Markdown list items, one per primary comparison with unpaired seeds.
  """
  lines = []
  for e in primary:
    if e["family"] == "primary" and e.get("unpaired"):
      left = "; ".join(f"seed {k}: {v}" for k, v in e["unpaired"].items())
      lines.append(f"- **Warning: {e['model']} + {e['regularizer']} leaves out "
                   f"{len(e['unpaired'])} meta-training seed(s) that could not be paired with "
                   f"a same-budget control** ({left}); its figures are over "
                   f"{e['meta_seeds']} seeds.")
  return lines


def answer_lines(primary: list[dict]) -> list[str]:
  """The opening of results.md.

  The primary differences, each in one sentence, then a warning for any that left seeds out.

  Args:
    primary: the comparisons, as from `comparisons`; only the `primary` family is read.

  Returns:
    Markdown list items: one sentence per primary difference, then the `unpaired_lines`.
  """
  return _difference_lines(primary) + unpaired_lines(primary)


def _difference_lines(primary: list[dict]) -> list[str]:
  lines = []
  for e in primary:
    if e["family"] != "primary":
      continue
    lo, hi = e["ci95"]
    lines.append(
        f"- **{e['model']} + {e['regularizer']} ({e['coefficient']:g}) − plain at the same "
        f"budget, test accuracy on {e['optimizee']}: {e['difference']:+.4f}** "
        f"(95% interval [{lo:+.4f}, {hi:+.4f}] over {e['meta_seeds']} meta-training seeds; "
        f"p = {e['p_value']:.3g}, Holm {e['p_holm']:.3g}); an effect larger than "
        f"{e['mde']:.4f} in either direction would have been found with 80% power.")
  return lines
