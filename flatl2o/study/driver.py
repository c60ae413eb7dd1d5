"""A study from start to end: `run` computes (or continues) every cell, `write_outputs`
writes results.json, results.md and the figures.

The stages, in order (each result a cell under `run_dir/cells/`):
1. coefficient sweep: L2O-DM with each `alphas` / `betas` value on the first
   meta seed; each term's coefficient is the best validated one that did not
   collapse;
2. every model x regularizer x meta seed, on the seen optimizee;
3. same-budget plain: the plain optimizer selected within each regularized
   one's selected meta-step (a rerun stopped there when needed);
4. baselines: Adam and SGD tuned on validation, SAM and Entropy-SGD at defaults;
5. meta-tests of every contender on every optimizee and test seed (paired);
6. matched-loss flatness per optimizee (the level: the median final training
   loss of the runs that did not collapse), from the runs' kept parameters.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import numpy as np

from flatl2o import optimizers, report
from flatl2o.study.cells import Cells
from flatl2o.study.commands import regularizer_label
from flatl2o.study.config import (BASELINES, OTHER_DATA, SEEN, TEST_SEED_BASE, StudyConfig,
                                  StudyInterrupted)
from flatl2o.study.figures import figures
from flatl2o.study.stages import (best_within, choose_coefficient, contender_identity,
                                  flatness_fn, loader, matched_run, meta_train_cell,
                                  optimizee_tasks, run_test, tune)
from flatl2o.study.tables import markdown, summarize


def run(config: StudyConfig, run_dir: str, should_stop: Callable[[], bool] = lambda: False,
        log: Callable[[str], Any] = print) -> dict:
  """Runs (or continues) every cell of the study; returns the results (`write_outputs`).

  Args:
    config: what to compute.
    run_dir: the study folder (cells cached there; another configuration's is
      refused with a ValueError before anything is written).
    should_stop: polled between cells and meta-steps; True raises
      `StudyInterrupted` (finished cells are kept: rerun to continue).
    log: receives one line per stage step (`print`, `logging.info`, ...).
  """
  s = config.settings
  builders = optimizee_tasks(config)
  seen = builders[SEEN]()  # bad dataset names fail here, before anything is written
  if OTHER_DATA in builders:
    builders[OTHER_DATA]()
  cells = Cells(run_dir, config)
  if config.other_dataset is None:
    log(f"{OTHER_DATA} is not meta-tested: no other_dataset given (--other_dataset=idx:PATH "
        "adds the seen MLP on a second dataset)")

  def check_stop(where):
    if should_stop():
      raise StudyInterrupted(where)

  # 1. The coefficient sweep on L2O-DM, first meta-training seed.
  coefficient = {"none": None}
  sweep = {}
  grids = {"hessian": s.alphas, "entropy": s.betas}
  for kind in (k for k in config.regularizers if k != "none"):
    sweep[kind] = [meta_train_cell(cells, config, seen, "l2o_dm", kind, c, s.meta_seeds[0],
                                   should_stop, log=log) for c in grids[kind]]
    coefficient[kind] = choose_coefficient(sweep[kind])
    if coefficient[kind] is None:
      log(f"every {kind} coefficient of the sweep collapsed; the smallest is kept")
      coefficient[kind] = min(grids[kind])
    log(f"{kind}: coefficient {coefficient[kind]:g} chosen on validation")

  # 2. Every model x regularizer x seed.
  trained = {}
  for model in config.models:
    for kind in config.regularizers:
      for seed in s.meta_seeds:
        trained[model, kind, seed] = meta_train_cell(cells, config, seen, model, kind,
                                                     coefficient[kind], seed, should_stop,
                                                     log=log)

  # 3. The plain optimizer selected at each regularized one's meta-step budget.
  same_budget = {}
  for (model, kind, seed), cell in trained.items():
    if kind == "none":
      continue
    plain = trained[model, "none", seed]
    budget = max(cell["best_meta_step"], 0)
    pick = best_within(plain["validations"], budget)
    if pick == plain["best_meta_step"] or plain["best_meta_step"] < 0:
      same_budget[model, kind, seed] = plain  # (a collapsed plain run stays collapsed)
    elif budget > 0:
      same_budget[model, kind, seed] = meta_train_cell(
          cells, config, seen, model, "none", None, seed, should_stop,
          num_meta_iterations=budget, log=log)

  # 4. Baselines.
  contenders: dict[str, dict] = {}
  for name in BASELINES:
    if name in ("adam", "sgd"):
      tuned = cells.get("tuning", name)
      if tuned is None:
        log(f"tuning {name}")
        tuned = cells.put(tune(seen, name, s.adam_grid if name == "adam" else s.sgd_grid, s,
                               should_stop), "tuning", name)
      lr = tuned["learning_rate"]
    else:
      lr = None
    contenders[name] = {"model": name, "regularizer": None, "coefficient": None,
                        "meta_seed": None, "learning_rate": lr,
                        "make": lambda name=name, lr=lr: optimizers.get(name, learning_rate=lr)}
  for (model, kind, seed), cell in trained.items():
    if cell["export"] is not None:  # None: the meta-training diverged
      contenders[cell["name"]] = {**contender_identity(cell), "make": loader(cells, cell)}
  for key, cell in same_budget.items():
    if cell["name"] not in contenders and cell["export"] is not None:
      contenders[cell["name"]] = {**contender_identity(cell), "make": loader(cells, cell),
                                  "seen_only": True}
  for kind, cells_of_kind in sweep.items():
    for cell in cells_of_kind:
      if cell["name"] not in contenders and cell["export"] is not None:
        contenders[cell["name"]] = {**contender_identity(cell), "make": loader(cells, cell),
                                    "seen_only": True}

  # 5. Meta-test every contender x optimizee x test seed; 6. flatness at matched training
  # loss, per optimizee once all its runs are in (the level is their median). Runs made in
  # this process keep their parameters at every evaluation, so matching needs no replay.
  measure = flatness_fn(s)
  test_seeds = [TEST_SEED_BASE + i for i in range(s.test_seeds)]
  tests: dict[tuple[str, str], dict] = {}
  matched = {}
  todo = [(o, c) for o in builders for c in contenders
          if o == SEEN or not contenders[c].get("seen_only")]
  to_run = sum(cells.get("test", o, c) is None for o, c in todo)
  tic, done = time.perf_counter(), 0
  for optimizee in builders:
    snapshots: dict[str, dict[int, dict]] = {}
    for o, name in todo:
      if o != optimizee:
        continue
      cell = cells.get("test", optimizee, name)
      if cell is None:
        check_stop(f"meta-testing {name} on {optimizee}")
        task, tx = builders[optimizee](), contenders[name]["make"]()
        snapshots[name] = {t: {} for t in test_seeds}
        cell = cells.put({"contender": name, "optimizee": optimizee, "runs": [
            run_test(task, tx, s, t, s.test_horizon, measure, snapshots[name][t])
            for t in test_seeds]}, "test", optimizee, name)
        done += 1
        eta = (time.perf_counter() - tic) / done * (to_run - done)
        log(f"meta-tested {name} on {optimizee} ({done}/{to_run}; ETA {eta:.0f} s)")
      tests[optimizee, name] = cell

    finals = [r["train_loss"] for (o, _), c in tests.items() if o == optimizee
              for r in c["runs"] if not r["collapsed"] and np.isfinite(r["train_loss"])]
    level = float(np.median(finals)) if finals else float("nan")
    for (o, name), cell in tests.items():
      if o != optimizee:
        continue
      got = cells.get("matched", optimizee, name)
      same_level = got is not None and (got["level"] == level or (
          np.isnan(got["level"]) and np.isnan(level)))
      if not same_level:
        check_stop(f"matched-loss flatness of {name} on {optimizee}")
        task, tx = builders[optimizee](), contenders[name]["make"]()
        kept = snapshots.get(name, {})
        got = cells.put({"level": level, "runs": [
            matched_run(task, tx, s, r, level, measure, kept.get(r["test_seed"]))
            for r in cell["runs"]]}, "matched", optimizee, name)
      matched[optimizee, name] = got

  results = {
      "config": config.identity(),
      "coefficients": {k: v for k, v in coefficient.items() if k != "none"},
      "meta_training": {c["name"]: c for c in [*trained.values(), *same_budget.values(),
                                               *[c for v in sweep.values() for c in v]]},
      "tuning": {n: cells.get("tuning", n) for n in ("adam", "sgd")},
      "contenders": {n: {k: v for k, v in c.items() if k != "make"}
                     for n, c in contenders.items()},
      "same_budget": {f"{m}-{regularizer_label(k, coefficient[k])}-s{sd}": c["name"]
                      for (m, k, sd), c in same_budget.items()},
      "cells": [{"contender": name, "optimizee": o,
                 **{k: v for k, v in contenders[name].items() if k not in ("make",)},
                 **r, "matched": m}
                for (o, name), cell in tests.items()
                for r, m in zip(cell["runs"], matched[o, name]["runs"])],
      "matched_levels": {o: matched[o, n]["level"] for (o, n) in matched},
      "test_seeds": test_seeds,
  }
  return results


def write_outputs(results: dict, out_dir: str) -> dict:
  """results.json, results.md and the figures; returns the table."""
  table = summarize(results)
  report.write_json(os.path.join(out_dir, "results.json"), {**results, "table": table})
  report.write_text(os.path.join(out_dir, "results.md"), markdown(results, table))
  figures(results, table, out_dir)
  return table
