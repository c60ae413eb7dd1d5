"""A study from start to end: `run` computes (or continues) every cell, `write_outputs`
writes results.json, results.md and the figures.

The stages, in order (each result a cell under `run_dir/cells/`):
1. coefficients: each term's sweep by decades to collapse on L2O-DM
   (`flatl2o.study.sweep`), or the shipped sweep's (`Preset.coefficients`);
   `--preset=sweep` stops here;
2. every model x regularizer x meta seed, on the seen optimizee (plain runs
   export every improvement of their selected optimizer);
3. same-budget plain: the plain optimizer selected within each regularized
   one's selected meta-step (an improvement export; a rerun stopped there for
   older run folders);
4. baselines: Adam and SGD tuned on validation, SAM and Entropy-SGD at defaults
   (those of `Preset.baselines`);
5. meta-tests of every contender on every optimizee and test seed (paired);
6. flatness at matched training loss per optimizee (the level: the lowest that
   80% of its runs reach), from the runs' kept parameters;
7. the answers (`flatl2o.study.analysis`): the primary differences with
   intervals, p-values (Holm) and minimum detectable effects, and the rank
   correlation of flatness with the generalization gap.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import numpy as np

from flatl2o import atomic_files, environment, optimizers
from flatl2o.study import analysis
from flatl2o.study import sweep as sweep_lib
from flatl2o.study.cells import Cells
from flatl2o.study.commands import regularizer_label
from flatl2o.study.config import OTHER_DATA, SEEN, TEST_SEED_BASE, StudyConfig, StudyInterrupted
from flatl2o.study.figures import figures
from flatl2o.study.progress import Progress
from flatl2o.study.stages import (best_within, contender_identity, flatness_fn, loader,
                                  matched_level, matched_run, meta_train_cell, optimizee_tasks,
                                  run_test, tune)
from flatl2o.study.tables import markdown, summarize


def run(config: StudyConfig, run_dir: str, should_stop: Callable[[], bool] = lambda: False,
        log: Callable[[str], Any] = print) -> dict:
  """Runs (or continues) every cell of the study; returns the results (`write_outputs`).

  The results' `wall_time_s` is the time of every part of the run that
  computed something (an interrupted part included; a rerun that finds every
  cell done adds nothing), `date` and `machine` those of its last such part
  (`run_dir/wall_time.json` keeps the parts, `wall_time_parts` counts them).

  Args:
    config: what to compute.
    run_dir: the study folder (cells cached there; another configuration's is
      refused with a ValueError before anything is written).
    should_stop: polled between cells and meta-steps; True raises
      `StudyInterrupted` (finished cells are kept: rerun to continue).
    log: receives one line per stage step (`print`, `logging.info`, ...).

  Returns:
    The results: every cell, the answers (`primary`, `correlations`) and the accounting.

  Raises:
    ValueError: a bad configuration, dataset or run directory (nothing written).
    StudyInterrupted: `should_stop()` turned True (this part's time is kept).

  Example:

  >>> import tempfile
  >>> from flatl2o import study
  >>> study.PRESETS["doc_tiny"] = study.Preset(  # a study in ~30 s: the numbers mean nothing
  ...     meta_seeds=(0, 1), num_meta_iterations=4, unroll_length=5, num_inner_steps=10,
  ...     meta_batch_size=1, validation_every=2, validation_seeds=1, adam_grid=(0.01,),
  ...     sgd_grid=(0.1,), tuning_seeds=1, test_seeds=2, test_horizon=10, eval_every=5,
  ...     flatness_batch=8, trace_probes=1, lanczos_iters=2, coefficients="shipped",
  ...     models=("l2o_dm",), optimizees=(study.SEEN,), baselines=("adam",))
  >>> results = study.run(study.StudyConfig(preset="doc_tiny", regularizers=("none", "hessian")),
  ...                     tempfile.mkdtemp(), log=lambda line: None)
  >>> [(e["model"], e["regularizer"], e["meta_seeds"]) for e in results["primary"]]
  [('l2o_dm', 'hessian', 2)]
  """
  builders = optimizee_tasks(config)
  builders[SEEN]()  # bad dataset names fail here, before anything is written
  if OTHER_DATA in builders:
    builders[OTHER_DATA]()
  cells = Cells(run_dir, config)
  start, earlier = time.perf_counter(), _parts(run_dir)
  part = {"date": time.strftime("%Y-%m-%d"), "seconds": 0.0, "cells": 0, "machine": machine()}

  def keep_part():  # after every cell: a killed part loses at most its last cell's time
    part.update(seconds=time.perf_counter() - start, cells=cells.computed)
    atomic_files.write_json(os.path.join(run_dir, WALL_TIME_FILE), {"parts": earlier + [part]})

  cells.on_put = keep_part
  try:
    results = _compute(config, cells, builders, should_stop, log)
  except StudyInterrupted:
    keep_part()  # it may have meta-trained part of a cell: that time counts
    raise
  finally:
    cells.on_put = None
  if cells.computed:
    keep_part()
  parts = _parts(run_dir)
  results["wall_time_s"] = sum(p["seconds"] for p in parts)
  results["wall_time_parts"] = len(parts)
  if parts:
    results["date"], results["machine"] = parts[-1]["date"], parts[-1]["machine"]
  return results


WALL_TIME_FILE = "wall_time.json"


def _parts(run_dir: str) -> list[dict]:
  try:
    with open(os.path.join(run_dir, WALL_TIME_FILE)) as f:
      return list(json.load(f)["parts"])
  except (OSError, ValueError, KeyError, TypeError):
    return []  # none yet (or unreadable: the time of earlier parts is then lost)


@dataclasses.dataclass
class _Study:
  """What every stage of one study process reads: the configuration, its cells, the
  optimizees, the stop request, the log, and (from stage 2 on) the ETA tracker."""

  config: StudyConfig
  cells: Cells
  builders: dict
  should_stop: Callable[[], bool]
  log: Callable[[str], Any]
  tracker: Any = None

  @property
  def s(self):
    return self.config.settings

  def check_stop(self, where: str) -> None:
    if self.should_stop():
      raise StudyInterrupted(where)

  def label(self, model: str, kind: str, seed: int, coefficient: dict) -> str:
    return f"{model}-{regularizer_label(kind, coefficient[model][kind])}-s{seed}"


def _compute(config: StudyConfig, cells: Cells, builders, should_stop, log) -> dict:
  """Every stage of `run`, one after another (each cell computed or read from `cells`)."""
  study = _Study(config, cells, builders, should_stop, log)
  seen = builders[SEEN]()
  if config.other_dataset is None:
    log(f"stage 1 (setup): {OTHER_DATA} is not meta-tested: no other_dataset given "
        "(--other_dataset=idx:PATH adds the seen MLP on a second dataset)")
  coefficient, sweep, sweep_cells, shipped = _stage_coefficients(study, seen)
  chosen = {"coefficients": _terms_only(coefficient[config.models[0]]),
            "model_coefficients": {m: _terms_only(c) for m, c in coefficient.items()}}
  if config.settings.sweep_only:
    return {"config": config.identity(), **chosen,
            "sweep_terms": sweep.get(config.models[0], {}),
            "sweep_models": sweep,
            "sweep": sweep_points(sweep),
            "meta_training": {c["name"]: c for c in sweep_cells}}
  trained = _stage_meta_training(study, seen, coefficient)
  same_budget, unpaired = _stage_same_budget(study, seen, trained, coefficient)
  contenders = _stage_contenders(study, seen, trained, same_budget)
  tests, matched = _stage_meta_tests(study, contenders)
  results = {
      "config": config.identity(), **chosen,
      "meta_training": {c["name"]: c for c in [*trained.values(), *same_budget.values(),
                                               *sweep_cells]},
      "sweep_terms": sweep.get(config.models[0], {}),
      "sweep_models": sweep,
      "sweep": sweep_points(sweep),
      "tuning": {n: cells.get("tuning", n) for n in ("adam", "sgd")},
      "contenders": {n: {k: v for k, v in c.items() if k != "make"}
                     for n, c in contenders.items()},
      "same_budget": {study.label(m, k, sd, coefficient): c["name"]
                      for (m, k, sd), c in same_budget.items()},
      "unpaired": unpaired,
      "cells": [{"contender": name, "optimizee": o,
                 **{k: v for k, v in contenders[name].items() if k not in ("make",)},
                 **r, "matched": m}
                for (o, name), cell in tests.items()
                for r, m in zip(cell["runs"], matched[o, name]["runs"])],
      "matched_levels": {o: matched[o, n]["level"] for (o, n) in matched},
      "test_seeds": _test_seeds(config.settings),
  }
  if shipped is not None:
    results["sweep"] = [p for p in shipped.get("sweep", [])
                        if p.get("model", "l2o_dm") in config.models]
    results["sweep_terms"] = shipped.get("sweep_terms", {})
    results["sweep_models"] = {m: t for m, t in shipped.get(
        "sweep_models", {"l2o_dm": results["sweep_terms"]}).items() if m in config.models}
    results["sweep_source"] = {k: shipped.get(k) for k in ("command", "date", "machine",
                                                           "wall_time_s")}
  results["primary"] = analysis.comparisons(results)
  results["variance"] = analysis.variance(results)
  results["correlations"] = analysis.correlations(results)
  return results


def _terms_only(coefficients: dict) -> dict:
  return {k: v for k, v in coefficients.items() if k != "none"}


def _test_seeds(s) -> list[int]:
  return [TEST_SEED_BASE + i for i in range(s.test_seeds)]


def _stage_coefficients(study: _Study, seen):
  """1. Each model's coefficient of each term: swept here by decades to collapse, or the
  shipped sweep's.

  Returns:
    `(coefficient: model -> kind -> coefficient ("none" -> None), sweep: model -> kind ->
    its sweep, the sweep's cells, the shipped sweep or None)`.
  """
  config, s, log = study.config, study.s, study.log
  kinds = [k for k in config.regularizers if k != "none"]
  if s.coefficients == "shipped":
    shipped = sweep_lib.load(config.sweep_path)
    every = config.model_coefficients()  # the sweep's, and a user's term's default
    coefficient = {m: {"none": None, **{k: every[m][k] for k in kinds}} for m in config.models}
    log(f"stage 1 (setup): coefficients from the sweep {config.sweep_file or 'shipped with flatl2o'} "
        f"({shipped.get('command', '?')}, {shipped.get('date', '?')}): "
        + "; ".join(f"{m}: " + ", ".join(f"{k} {coefficient[m][k]:g}" for k in kinds)
                    for m in config.models))
    return coefficient, {}, [], shipped
  coefficient, sweep, sweep_cells = {}, {}, []
  tracker = plan_sweep_progress(config, kinds)
  for model in config.models:
    coefficient[model], sweep[model] = _sweep_model(study, seen, model, kinds, tracker,
                                                    sweep_cells)
  return coefficient, sweep, sweep_cells, None


def _sweep_model(study: _Study, seen, model: str, kinds, tracker, sweep_cells: list):
  """Stage 1 for one model: plain on the sweep seeds, then each term's decades; returns
  `(kind -> coefficient, kind -> sweep)` and appends the cells to `sweep_cells`."""
  config, s, log = study.config, study.s, study.log
  prefix = "stage 1 (sweep): " + ("" if len(config.models) == 1 else f"{model} ")
  plain = [meta_train_cell(study.cells, config, seen, model, "none", None, seed,
                           study.should_stop, log=log, measure_ratio=True,
                           progress=prefix + "plain", tracker=tracker)
           for seed in s.sweep_seeds]  # the reference: plain on the sweep seeds
  sweep_cells.extend(plain)
  plain_point = {**sweep_lib.point("none", 0.0, plain), "model": model}
  coefficient, sweep = {"none": None}, {}
  for kind in kinds:
    def train_point(c, kind=kind):
      for seed in s.sweep_seeds:  # the plan's next slot of this term and seed: this cell
        slot = next((n for n in tracker.order if n.startswith(f"sweep {model} {kind} point ")
                     and n.endswith(f" s{seed}")), None)
        name = f"{model}-{regularizer_label(kind, c)}-s{seed}"
        if slot is not None and name not in tracker.items:
          tracker.rename(slot, name)
      runs = [meta_train_cell(study.cells, config, seen, model, kind, c, seed,
                              study.should_stop, log=log, measure_ratio=True,
                              progress=f"{prefix}{kind} {c:g}", tracker=tracker)
              for seed in s.sweep_seeds]
      sweep_cells.extend(runs)
      return runs
    sweep[kind] = sweep_lib.sweep_term(kind, *s.sweep_range, train_point)
    sweep[kind]["plain"] = plain_point
    sweep[kind]["model"] = model
    for p in sweep[kind]["points"]:
      p["model"] = model
    for slot in [n for n in tracker.order if n.startswith(f"sweep {model} {kind} point ")]:
      tracker.skip(slot)  # the sweep stopped before the plan's last decade
    log(f"{prefix}{sweep_lib.summary_line(sweep[kind])}; {tracker.line()}")
    coefficient[kind] = sweep[kind]["chosen"]
    if coefficient[kind] is None:
      coefficient[kind] = min(p["coefficient"] for p in sweep[kind]["points"])
      log(f"{prefix}{kind}: the smallest swept coefficient, {coefficient[kind]:g}, is kept")
  return coefficient, sweep


def _stage_meta_training(study: _Study, seen, coefficient) -> dict:
  """2. Every model x regularizer x seed (plain runs keep each improvement for stage 3);
  sets `study.tracker`, the ETA of the rest of the study."""
  config, s = study.config, study.s
  trained = {}
  planned = [(m, k, sd) for m in config.models for k in config.regularizers for sd in s.meta_seeds]
  names = [study.label(m, k, sd, coefficient) for m, k, sd in planned]
  study.tracker = tracker = plan_progress(config, planned, names)
  cached = sum(study.cells.get("meta", n) is not None for n in names)
  if cached:
    study.log(f"stage 2 (meta-training): continuing: {cached} of {len(planned)} meta-training "
              "cells done")
  for i, (model, kind, seed) in enumerate(planned):
    trained[model, kind, seed] = meta_train_cell(
        study.cells, config, seen, model, kind, coefficient[model][kind], seed,
        study.should_stop,
        log=study.log, keep_improvements=kind == "none", progress=f"stage 2 (meta-training), "
        f"cell {i + 1}/{len(planned)}", tracker=tracker)
    if kind != "none" and (model, "none", seed) in trained and (
        control_is_plain(trained[model, kind, seed], trained[model, "none", seed])):
      tracker.drop_control()  # no meta-test of its own: plain's selected optimizer is it
  return trained


def _stage_same_budget(study: _Study, seen, trained, coefficient):
  """3. The plain optimizer selected at each regularized one's meta-step budget. A seed that
  cannot be paired is named with its reason (results.json "unpaired", results.md), never
  dropped without a word.

  Returns:
    `(same_budget: (model, kind, seed) -> the plain cell, unpaired: label -> reason)`.
  """
  same_budget, unpaired = {}, {}
  for (model, kind, seed), cell in trained.items():
    if kind == "none":
      continue
    label = study.label(model, kind, seed, coefficient)
    plain = trained[model, "none", seed]
    reason = unpaired_reason(cell, plain)
    if reason is not None:
      unpaired[label] = reason
      study.log(f"stage 3 (same-budget control): {label} has no same-budget control: {reason}")
      continue
    pick = best_within(plain["validations"], cell["best_meta_step"])
    if pick == plain["best_meta_step"]:
      same_budget[model, kind, seed] = plain
    elif plain.get("improvements") and pick in plain["improvements"]:
      name = f"{plain['name']}@{pick}"
      score = next(v["score"] for v in plain["validations"] if v["iteration"] == pick)
      same_budget[model, kind, seed] = {**plain, "name": name, "best_meta_step": pick,
                                        "best_validation_accuracy": score,
                                        "export": os.path.join("optimizers", name)}
    else:  # a run folder from before improvements were kept: retrain up to the budget
      same_budget[model, kind, seed] = meta_train_cell(
          study.cells, study.config, seen, model, "none", None, seed, study.should_stop,
          num_meta_iterations=cell["best_meta_step"], log=study.log)
  own = sum(1 for (m, _, sd), c in same_budget.items() if c is trained[m, "none", sd])
  study.log(f"stage 3 (same-budget control): {len(same_budget)} regularized cells paired with "
            f"plain selected within their meta-step budget ({own} of them plain's own "
            f"selection), {len(unpaired)} unpaired")
  return same_budget, unpaired


def _stage_contenders(study: _Study, seen, trained, same_budget) -> dict[str, dict]:
  """4. The baselines (Adam and SGD tuned on validation), then every trained optimizer and
  every same-budget control: name -> identity and `make` (builds its transformation)."""
  s, cells, tracker = study.s, study.cells, study.tracker
  contenders: dict[str, dict] = {}
  for name in s.baselines:
    if name in ("adam", "sgd"):
      tuned = cells.get("tuning", name)
      if tuned is None:
        tracker.start(f"tuning {name}")
        tuned = cells.put(tune(seen, name, s.adam_grid if name == "adam" else s.sgd_grid, s,
                               study.should_stop), "tuning", name)
        tracker.finish(f"tuning {name}")
        study.log(f"stage 4 (baselines): tuned {name}: learning rate "
                  f"{tuned['learning_rate']:g}; {tracker.line()}")
      elif f"tuning {name}" in tracker.items:
        tracker.skip(f"tuning {name}")
      lr = tuned["learning_rate"]
    else:
      lr = None
    contenders[name] = {"model": name, "regularizer": None, "coefficient": None,
                        "meta_seed": None, "learning_rate": lr,
                        "make": lambda name=name, lr=lr: optimizers.get(name, learning_rate=lr)}
  for cell in trained.values():
    if cell["export"] is not None:  # None: the meta-training diverged
      contenders[cell["name"]] = {**contender_identity(cell), "make": loader(cells, cell)}
  for cell in same_budget.values():  # meta-tested everywhere: a control of each question
    if cell["name"] not in contenders and cell["export"] is not None:
      contenders[cell["name"]] = {**contender_identity(cell), "make": loader(cells, cell),
                                  "control": True}
  return contenders


def _stage_meta_tests(study: _Study, contenders):
  """5. Meta-test every contender x optimizee x test seed; 6. flatness at matched training
  loss, per optimizee once all its runs are in. Runs made in this process keep their
  parameters at every evaluation, so matching needs no replay.

  Returns:
    `(tests, matched)`, both keyed by (optimizee, contender).
  """
  tests: dict[tuple[str, str], dict] = {}
  matched = {}
  todo = [(o, c) for o in study.builders for c in contenders
          if o == SEEN or not contenders[c].get("seen_only")]  # (older folders' sweep cells)
  slot_of = study.tracker.assign_tests(todo)
  measure = flatness_fn(study.s)  # one jitted function: every optimizee shares its compilations
  for optimizee in study.builders:
    snapshots = _meta_test_optimizee(study, contenders, optimizee, todo, slot_of, tests, measure)
    matched.update(_matched_flatness(study, contenders, optimizee, tests, snapshots, measure))
  return tests, matched


def _meta_test_optimizee(study: _Study, contenders, optimizee, todo, slot_of, tests, measure):
  """Stage 5 on one optimizee: fills `tests`; returns the kept parameters of the runs made
  in this process (contender -> test seed -> evaluation step -> parameters)."""
  s, cells, tracker = study.s, study.cells, study.tracker
  snapshots: dict[str, dict[int, dict]] = {}
  for o, name in todo:
    if o != optimizee:
      continue
    cell = cells.get("test", optimizee, name)
    slot = slot_of.get((optimizee, name))
    if cell is None:
      study.check_stop(f"meta-testing {name} on {optimizee}")
      if slot is not None:
        tracker.start(slot)
      task, tx = study.builders[optimizee](), contenders[name]["make"]()
      snapshots[name] = {t: {} for t in _test_seeds(s)}
      runs = []
      for t in _test_seeds(s):
        runs.append(run_test(task, tx, s, t, s.test_horizon, measure, snapshots[name][t]))
        if slot is not None:
          tracker.update(slot, len(runs) * s.test_horizon)
      cell = cells.put({"contender": name, "optimizee": optimizee, "runs": runs},
                       "test", optimizee, name)
      if slot is not None:
        tracker.finish(slot)
      study.log(f"stage 5 (meta-tests), cell {todo.index((optimizee, name)) + 1}/{len(todo)}: "
                f"meta-tested {name} on {optimizee}; {tracker.line()}")
    elif slot is not None:
      tracker.skip(slot)
    tests[optimizee, name] = cell
  return snapshots


def _matched_flatness(study: _Study, contenders, optimizee, tests, snapshots, measure) -> dict:
  """Stage 6 on one optimizee: flatness where each run first reaches the training loss
  that the optimizee's runs share (the level: `matched_level`; controls left out of it)."""
  s, cells, tracker = study.s, study.cells, study.tracker
  level = matched_level([r for (o, n), c in tests.items() if o == optimizee
                         and not contenders[n].get("control") for r in c["runs"]])
  matched = {}
  item = f"matched {optimizee}"
  tracker.start(item)
  tracker.update(item, 0)
  for j, ((_, name), cell) in enumerate((k, c) for k, c in tests.items() if k[0] == optimizee):
    got = cells.get("matched", optimizee, name)
    same_level = got is not None and (got["level"] == level or (
        np.isnan(got["level"]) and np.isnan(level)))
    if not same_level:
      study.check_stop(f"matched-loss flatness of {name} on {optimizee}")
      task, tx = study.builders[optimizee](), contenders[name]["make"]()
      kept = snapshots.get(name, {})
      got = cells.put({"level": level, "runs": [
          matched_run(task, tx, s, r, level, measure, kept.get(r["test_seed"]))
          for r in cell["runs"]]}, "matched", optimizee, name)
    matched[optimizee, name] = got
    tracker.update(item, (j + 1) * s.test_seeds)
  tracker.finish(item)
  study.log(f"stage 6 (flatness at matched training loss): {optimizee} at training loss "
            f"{level:.4g}; {tracker.line()}")
  return matched


# Seconds per unit on this project's 2-core CPU, idle (the default study's run of 2026-12-07:
# digits MLP, L2O-DM, unroll 20, meta-batch 4, validation included; scripts/eta_trace.py):
# the ETA's priors until the run has measured its own, scaled by how fast the run's measured
# kinds went (`flatl2o.study.progress`). Units: a meta-step; a training step of a meta-test
# or tuning run; one run's matched flatness. PRIOR_STARTUP: the first item's compilation.
PRIOR_SECONDS = {"none": 0.117, "hessian": 0.165, "entropy": 0.191, "test": 0.00033,
                 "tuning": 0.0005, "matched": 0.005}
PRIOR_STARTUP = {"none": 17.0, "hessian": 24.0, "entropy": 20.0, "test": 5.0, "tuning": 3.0,
                 "matched": 0.5}


class StudyProgress(Progress):
  """The study's plan: its meta-training cells, tunings, and per optimizee a meta-test
  slot per possible contender (baselines, every trained cell, a same-budget control per
  regularized one) and the matched-loss flatness of them all. A control that turns out
  to be plain's own selection drops one slot per optimizee (`drop_control`)."""

  def __init__(self, items, prior, optimizees, test_units: int, **kwargs):
    super().__init__(items, prior, **kwargs)
    self.optimizees = list(optimizees)
    self.test_units = test_units

  def test_slots(self, optimizee: str) -> list[str]:
    """The meta-test slots of an optimizee, in plan order.

    Args:
      optimizee: the optimizee's name.

    Returns:
      The names of the plan's items "test OPTIMIZEE i".
    """
    return [n for n in self.order if n.startswith(f"test {optimizee} ")]

  def drop_control(self) -> None:
    for optimizee in self.optimizees:
      free = [n for n in self.test_slots(optimizee) if not self.items[n].finished]
      if free:
        self.skip(free[-1])
        self.items[f"matched {optimizee}"].units -= self.test_units

  def assign_tests(self, todo) -> dict:
    """A slot per (optimizee, contender) to meta-test; slots left over are skipped.

    Each optimizee's matched-loss item is resized to the contenders it will meta-test.

    Args:
      todo: the (optimizee, contender) pairs to meta-test.

    Returns:
      (optimizee, contender) -> the name of its unfinished slot in the plan.
    """
    slot_of = {}
    for optimizee in self.optimizees:
      free = [n for n in self.test_slots(optimizee) if not self.items[n].finished]
      mine = [key for key in todo if key[0] == optimizee]
      slot_of.update(zip(mine, free))
      for slot in free[len(mine):]:
        self.skip(slot)
      self.items[f"matched {optimizee}"].units = len(mine) * self.test_units
    return slot_of


def plan_sweep_progress(config: StudyConfig, kinds) -> Progress:
  """The ETA's plan of the coefficient sweep (stage 1).

  Plain on every sweep seed, and per term as many points as the shipped sweep ran for it
  (at most a decade from 1 up to the sweep's largest coefficient; every decade for a term
  it lacks), on every seed: slots named "sweep KIND point I sSEED" that take their cell's
  name when the sweep reaches them (`Progress.rename`); a term whose sweep stops early
  skips the rest, one that goes further runs untracked.

  Args:
    config: the study's configuration (its preset's sweep seeds, range and budget).
    kinds: the terms swept.

  Returns:
    The plan, with the priors `PRIOR_SECONDS` and `PRIOR_STARTUP`; its lines give the ETA
    of the whole run for the sweep preset, of the sweep for the others.
  """
  s = config.settings
  decades = max(1, int(math.floor(math.log10(s.sweep_range[1]) + 1e-9)) + 1)
  shipped = sweep_lib.load().get("sweep_terms", {})  # L2O-DM's: the guess for every model
  points = {kind: min(decades, len(shipped.get(kind, {}).get("points", [])) or decades)
            for kind in kinds}
  items = []
  for model in config.models:
    items += [(f"{model}-none-s{seed}", "none", s.num_meta_iterations) for seed in s.sweep_seeds]
    items += [(f"sweep {model} {kind} point {i + 1} s{seed}", kind, s.num_meta_iterations)
              for kind in kinds for i in range(points[kind]) for seed in s.sweep_seeds]
  prior = {k: PRIOR_SECONDS.get(k, PRIOR_SECONDS["entropy"]) for k in ("none", *kinds)}
  tracker = Progress(items, prior, prior_startup=PRIOR_STARTUP)
  if not s.sweep_only:
    tracker.scope = "the sweep (stage 1)"
  return tracker


def plan_progress(config: StudyConfig, planned, names) -> StudyProgress:
  """The ETA's plan of a study (see `StudyProgress`).

  Args:
    config: the study's configuration (its preset's budgets, baselines and optimizees).
    planned: the meta-training cells, as (model, kind, meta seed).
    names: the cells' names, in the order of `planned`.

  Returns:
    The plan: every meta-training cell, a tuning per tuned baseline, and per optimizee a
    meta-test slot per possible contender and its matched-loss flatness, with the priors
    `PRIOR_SECONDS` and `PRIOR_STARTUP`.
  """
  s = config.settings
  items = [(n, k, s.num_meta_iterations) for n, (_, k, _) in zip(names, planned)]
  grids = {"adam": s.adam_grid, "sgd": s.sgd_grid}
  items += [(f"tuning {b}", "tuning", len(grids[b]) * s.tuning_seeds * s.test_horizon)
            for b in s.baselines if b in grids]
  contenders = len(s.baselines) + len(planned) + sum(k != "none" for _, k, _ in planned)
  for optimizee in config.optimizees:
    items += [(f"test {optimizee} {i + 1}", f"test:{optimizee}",
               s.test_seeds * s.test_horizon) for i in range(contenders)]
    items.append((f"matched {optimizee}", "matched", contenders * s.test_seeds))
  prior = {**{k: PRIOR_SECONDS.get(k, PRIOR_SECONDS["entropy"]) for _, k, _ in planned},
           **{k: PRIOR_SECONDS[k] for k in ("test", "tuning", "matched")}}
  return StudyProgress(items, prior, config.optimizees, s.test_seeds,
                       prior_startup=PRIOR_STARTUP)


def unpaired_reason(cell: dict, plain: dict) -> str | None:
  """Why a regularized cell has no same-budget control (None when it has one).

  Args:
    cell: the regularized meta-training cell.
    plain: the plain meta-training cell of the same model and meta seed.

  Returns:
    A phrase saying whose validations all collapsed (up to the regularized cell's selected
    meta-step, for plain), or None.
  """
  if cell["best_meta_step"] < 0:
    return "every validation of the regularized run collapsed (no selected meta-step)"
  if plain["best_meta_step"] < 0:
    return "every validation of plain collapsed"
  if best_within(plain["validations"], cell["best_meta_step"]) is None:
    return (f"plain has no validation that did not collapse up to meta-step "
            f"{cell['best_meta_step']}")
  return None


def control_is_plain(cell: dict, plain: dict) -> bool:
  """True when a regularized cell's same-budget control needs no meta-test of its own.

  Plain's selected optimizer is it, or there is none to compare with.

  Args:
    cell: the regularized meta-training cell.
    plain: the plain meta-training cell of the same model and meta seed.

  Returns:
    Whether the control is unpaired (`unpaired_reason`) or is plain's own selection.
  """
  if unpaired_reason(cell, plain) is not None:
    return True
  return best_within(plain["validations"], cell["best_meta_step"]) == plain["best_meta_step"]


def machine() -> str:
  """The machine a run was made on, in a few words (results.json's "machine").

  Returns:
    "N-core MACHINE (BACKEND: DEVICE), JAX VERSION", from `environment.describe`.
  """
  d = environment.describe()
  return (f"{d['cpu_count']}-core {d['machine']} ({d['backend']}: {d['device']}), "
          f"JAX {d['jax']}")


def sweep_points(sweep: dict[str, dict[str, dict]]) -> list[dict]:
  """results.json's "sweep": per model, the plain reference point, then every term's points.

  Args:
    sweep: model -> term -> its sweep (`sweep.sweep_term`'s, with the plain reference
      point under "plain"); every point carries its `model`.

  Returns:
    The points; empty when no term was swept.
  """
  points = []
  for terms in sweep.values():
    terms = list(terms.values())
    points += ([terms[0]["plain"]] if terms else []) + [p for t in terms for p in t["points"]]
  return points


def write_outputs(results: dict, out_dir: str) -> dict:
  """results.json, results.md and the figures; returns the table.

  Args:
    results: the study's results; results.json holds them with the table under "table".
    out_dir: the folder the outputs are written to.

  Returns:
    The main table, as `tables.summarize` returns it.
  """
  table = summarize(results)
  atomic_files.write_json(os.path.join(out_dir, "results.json"), {**results, "table": table})
  atomic_files.write_text(os.path.join(out_dir, "results.md"), markdown(results, table))
  figures(results, table, out_dir)
  return table
