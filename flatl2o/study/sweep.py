"""The coefficient sweep by decades, to the edge of collapse, and the shipped sweep.

Each flatness term's coefficient is swept by decades on L2O-DM and the seen
optimizee: 1, 10, 100, ... until a point collapses (every sweep seed's
meta-training ends with an optimizer that no longer lowers the training loss,
`flatl2o.meta.selection.collapsed`) or the preset's largest coefficient is
passed, in which case the sweep says the term never collapsed up to there.
When 1 already collapses the sweep goes down by decades instead, to the first
point that does not. Every point is meta-trained with each of the preset's
`sweep_seeds`; its validation accuracy is the mean over them of each run's best
validated accuracy, and its `grad_ratio` the mean over them of
||meta-gradient of the flatness term|| / ||meta-gradient of the loss term||
at the run's selected meta-parameters (`flatl2o.meta.gradient_ratio`), so a
reader sees whether a coefficient could matter at all. The coefficient chosen
is the best mean validation accuracy among the points where no seed collapsed
(ties: the smaller). Test data are never used.

`--preset=sweep` runs only this stage; its result is shipped as
`flatl2o/study/sweep.json` (with the command, machine and date that made it),
where the default study (`--preset=primary`) takes its coefficients from;
`--sweep_file=PATH` takes them from another sweep's results.json instead.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable

import numpy as np

from flatl2o.meta import terms

SWEEP_FILE = os.path.join(os.path.dirname(__file__), "sweep.json")


def next_coefficient(points: list[dict], smallest: float, largest: float) -> float | None:
  """The decade to run after `points` (in the order run), or None when the sweep is done.

  Up from 1 until a point collapses or `largest` is passed; if 1 collapses, down
  until a point does not or `smallest` is passed.

  Args:
    points: the points run so far, in the order run (each with `coefficient` and
      `collapsed`).
    smallest: the smallest coefficient the sweep may go down to.
    largest: the largest coefficient the sweep may go up to.

  Returns:
    The next coefficient (1.0 first), or None.
  """
  if not points:
    return 1.0
  first, last = points[0], points[-1]
  going_down = first["collapsed"]
  c = last["coefficient"]
  if going_down:
    if not last["collapsed"] and len(points) > 1:
      return None
    nxt = _decade(c / 10)
    return nxt if nxt >= smallest * (1 - 1e-9) else None
  if last["collapsed"]:
    return None
  nxt = _decade(c * 10)
  return nxt if nxt <= largest * (1 + 1e-9) else None


def _decade(x: float) -> float:
  return float(10.0 ** round(math.log10(x)))


def point(kind: str, coefficient: float, runs: list[dict]) -> dict[str, Any]:
  """One sweep point from its meta-training cells (one per sweep seed).

  Args:
    kind: the flatness term.
    coefficient: the point's coefficient.
    runs: its meta-training cells, each with `best_validation_accuracy`, `collapsed`,
      `best_meta_step`, `name` and optionally `grad_ratio`.

  Returns:
    A dict with `regularizer`, `coefficient`, `validation_accuracy` (the mean of the finite
    ones), `validation_accuracies`, `collapsed` (every run collapsed), `collapsed_runs`,
    `runs`, `grad_ratio` (the mean of the finite ratios), `selected_meta_steps` and `cells`.
  """
  accs = [r["best_validation_accuracy"] for r in runs
          if np.isfinite(r["best_validation_accuracy"])]
  ratios = [r.get("grad_ratio", {}).get("ratio", float("nan")) for r in runs]
  ratios = [v for v in ratios if v is not None and np.isfinite(v)]
  return {"regularizer": kind, "coefficient": float(coefficient),
          "validation_accuracy": float(np.mean(accs)) if accs else float("nan"),
          "validation_accuracies": [float(r["best_validation_accuracy"]) for r in runs],
          "collapsed": all(r["collapsed"] for r in runs),
          "collapsed_runs": sum(bool(r["collapsed"]) for r in runs), "runs": len(runs),
          "grad_ratio": float(np.mean(ratios)) if ratios else float("nan"),
          "selected_meta_steps": [int(r["best_meta_step"]) for r in runs],
          "cells": [r["name"] for r in runs]}


def choose(points: list[dict]) -> float | None:
  """The coefficient with the best mean validation accuracy where no seed collapsed.

  Ties go to the smaller coefficient; points of "none" are not candidates.

  Args:
    points: sweep points, as from `point`.

  Returns:
    The chosen coefficient, or None when every point collapsed in some seed or has no
    finite validation accuracy.
  """
  alive = [p for p in points if p["regularizer"] != "none" and p["collapsed_runs"] == 0
           and np.isfinite(p["validation_accuracy"])]
  if not alive:
    return None
  return max(alive, key=lambda p: (p["validation_accuracy"], -p["coefficient"]))["coefficient"]


def sweep_term(kind: str, smallest: float, largest: float,
               train_point: Callable[[float], list[dict]]) -> dict[str, Any]:
  """Runs one term's sweep; `train_point(c)` meta-trains (or reads) c's cells.

  Args:
    kind: the flatness term.
    smallest: the smallest coefficient the sweep may go down to.
    largest: the largest coefficient the sweep may go up to.
    train_point: coefficient -> the meta-training cells of that point, one per sweep seed.

  Returns:
    A dict with `regularizer`, `points` (by coefficient), `chosen` (`choose`'s),
    `reached_collapse` (whether the largest point run collapsed) and `largest` (its
    coefficient).
  """
  points: list[dict] = []
  while (c := next_coefficient(points, smallest, largest)) is not None:
    points.append(point(kind, c, train_point(c)))
  ordered = sorted(points, key=lambda p: p["coefficient"])
  top = ordered[-1]
  return {"regularizer": kind, "points": ordered, "chosen": choose(points),
          "reached_collapse": top["collapsed"], "largest": top["coefficient"]}


def summary_line(term: dict) -> str:
  """One sentence on a term's sweep: where it collapsed or that it never did.

  Args:
    term: a term's sweep, as `sweep_term` returns it.

  Returns:
    "KIND: collapses at C; ..." or "KIND: never collapsed up to C; ...", then the
    coefficient chosen or that nothing could be.
  """
  kind, chosen = term["regularizer"], term["chosen"]
  edge = (f"collapses at {term['largest']:g}" if term["reached_collapse"] else
          f"never collapsed up to {term['largest']:g}")
  pick = f"coefficient {chosen:g} chosen on validation" if chosen is not None else (
      "every point collapsed in some seed: nothing to choose")
  return f"{kind}: {edge}; {pick}"


def shipped_coefficient(shipped: dict[str, Any], kind: str) -> float:
  """Term `kind`'s coefficient in a sweep (`load`); a term of the user's own that the sweep
  did not cover takes its coefficient field's default (`flatl2o.meta.terms`).

  Args:
    shipped: a sweep, as `load` returns it.
    kind: a registered term.

  Returns:
    The coefficient.

  Raises:
    ValueError: when the sweep lacks `kind` and its coefficient field has no numeric
      default.
  """
  if kind in shipped["coefficients"]:
    return float(shipped["coefficients"][kind])
  field = next(f for f in dataclasses.fields(terms.get(kind))
               if f.name == terms.coefficient_field(kind))
  if not isinstance(field.default, (int, float)):
    raise ValueError(f"the sweep has no coefficient for {kind!r} and its field "
                     f"{field.name!r} has no numeric default; sweep it (--preset=sweep "
                     f"--regularizers=none,{kind})")
  return float(field.default)


def model_coefficients(shipped: dict[str, Any]) -> dict[str, dict[str, float]]:
  """Each swept model's coefficients in a sweep (`load`).

  Args:
    shipped: a sweep, as `load` returns it.

  Returns:
    Model -> term -> coefficient: the sweep's `model_coefficients`, or for a sweep of
    L2O-DM alone (every sweep before 2026-12-08) {"l2o_dm": its `coefficients`}.
  """
  every = shipped.get("model_coefficients")
  if isinstance(every, dict) and every:
    return every
  return {"l2o_dm": shipped["coefficients"]}


def load(path: str | None = None) -> dict[str, Any]:
  """A sweep's coefficients and points: the shipped one, or a sweep run's results.json.

  Args:
    path: the sweep's JSON file (None: the shipped `flatl2o/study/sweep.json`).

  Returns:
    The file's JSON object, with `coefficients` (term -> coefficient).

  Raises:
    ValueError: when the file is missing or unreadable, or has no `coefficients` object
      with numbers for hessian and entropy.
  """
  path = path or SWEEP_FILE
  try:
    with open(path) as f:
      data = json.load(f)
  except FileNotFoundError:
    raise ValueError(f"no sweep at {path}: run `python -m experiments.reproduce "
                     "--preset=sweep --models=MODEL[,MODEL...]` and give "
                     "--sweep_file=runs/reproduce-sweep/results.json") from None
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"cannot read the sweep {path}: {e}") from None
  coefficients = data.get("coefficients") if isinstance(data, dict) else None
  if (not isinstance(coefficients, dict)
      or not all(isinstance(coefficients.get(k), (int, float)) for k in ("hessian", "entropy"))):
    raise ValueError(f"{path} is not a sweep: it needs a 'coefficients' object with numbers for "
                     "hessian and entropy (a --preset=sweep results.json or the shipped "
                     "flatl2o/study/sweep.json)")
  return data
