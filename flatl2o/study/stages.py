"""The stages of a study, one cell at a time: meta-training, selection, tuning, meta-tests.

- `meta_train_cell`: meta-trains one model x regularizer x seed (or returns its
  cached cell) and exports it into the run directory; `validations` reads its
  run directory's validations, `best_within` the meta-step selection would pick
  within a budget (the same-budget plain rerun), `choose_coefficient` the
  sweep's coefficient.
- `tune`: a baseline's learning rate by validation accuracy.
- `run_test`: one meta-test run with its final flatness (`flatness_fn`);
  `matched_run`: flatness at the first evaluation reaching a training-loss level.
- `optimizee_tasks`: the seen and unseen optimizees, built lazily.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from flatl2o import atomic_files, checkpoints, evaluation, meta, optimizers, tasks
from flatl2o import flatness as flatness_lib
from flatl2o.checkpoints import save_optimizer
from flatl2o.study.cells import Cells
from flatl2o.study.commands import architecture, meta_config, regularizer_label
from flatl2o.study.config import (OTHER_DATA, SEEN, TUNING_SEED_BASE, UNSEEN, Preset,
                                  StudyConfig, StudyInterrupted)

# ---------------------------------------------------------------- meta-training


def validations(run_dir: str) -> list[dict]:
  """Every validation of a meta-training run directory, in order (resumes included).

  Args:
    run_dir: the meta-training run directory (its `metrics.jsonl` is read).

  Returns:
    One dict per validated meta-step, by meta-step, with `iteration`, `score` and
    `collapsed`; a meta-step logged again after a resume counts once (its last record).
  """
  records = {}
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      if "validation_score" in r:
        records[r["iteration"]] = {"iteration": r["iteration"], "score": r["validation_score"],
                                   "collapsed": bool(r["collapsed"])}
  return [records[k] for k in sorted(records)]


def meta_train_cell(cells: Cells, config: StudyConfig, task, model: str, kind: str,
                    coefficient: float | None, seed: int, should_stop,
                    num_meta_iterations: int | None = None, log=print, *,
                    keep_improvements: bool = False, measure_ratio: bool = False,
                    progress: str = "", tracker=None) -> dict:
  """Meta-trains one optimizer (or returns its cached cell); exports it in the run dir.

  Args:
    cells: the study's cells; the cell is `meta/NAME`, its run directory `meta/NAME` and its
      export `optimizers/NAME` under the study folder.
    config: the study's configuration (its preset's budgets, `meta_config`).
    task: the optimizee of meta-training.
    model: the study model (`config.MODELS`).
    kind: the regularizer's term, or "none".
    coefficient: the term's coefficient (None with "none").
    seed: the meta-training seed.
    should_stop: polled by meta-training; True interrupts it (resumed on the next run).
    num_meta_iterations: overrides the preset's meta-step budget (the cell's name then
      ends in `-budgetN`); None keeps it.
    log: called with each line of progress.
    keep_improvements: also export every improvement of the selected optimizer
      (`optimizers/NAME@STEP`): the best within any earlier budget is at hand without
      retraining (the same-budget control).
    measure_ratio: record `grad_ratio` (`flatl2o.meta.gradient_ratio` at the selected
      meta-parameters).
    progress: prefixes its log lines ("cell 3/15").
    tracker: a `Progress` with an item of the cell's name: told of every logged meta-step;
      ends each validation's line (the study's ETA).

  Returns:
    The cell: its identity (`name`, `model`, `regularizer`, `coefficient`, `meta_seed`,
    `num_meta_iterations`), `meta_steps_done`, `best_validation_accuracy`, `best_meta_step`,
    `collapsed`, `validations`, `export` (relative to the study folder), `grad_ratio` and
    `wall_time_s`; a diverged meta-training gives a collapsed cell with `diverged` and no
    export.

  Raises:
    StudyInterrupted: when `should_stop` interrupts the meta-training.
  """
  name = f"{model}-{regularizer_label(kind, coefficient)}-s{seed}" + (
      f"-budget{num_meta_iterations}" if num_meta_iterations is not None else "")
  tracked = tracker is not None and name in tracker.items
  cached = cells.get("meta", name)
  if cached is not None:
    if tracked:
      tracker.skip(name)
    return cached
  if tracked:
    tracker.start(name)
  mconfig = meta_config(model, kind, coefficient, seed, config.settings, num_meta_iterations)
  identity = {"name": name, "model": model, "regularizer": kind, "coefficient": coefficient,
              "meta_seed": seed, "num_meta_iterations": mconfig.num_meta_iterations}
  return _meta_train(cells, task, identity, mconfig, should_stop, log,
                     f"{progress} " if progress else "", keep_improvements, measure_ratio,
                     tracker if tracked else None, tracker)


def _meta_train(cells: Cells, task, identity: dict, mconfig, should_stop, log, prefix: str,
                keep_improvements: bool, measure_ratio: bool, tracked, tracker) -> dict:
  """`meta_train_cell`'s work once the cell is not cached: meta-train (resuming), export,
  and put the cell (`tracked`: the tracker if the cell is one of its items, else None)."""
  name, seed = identity["name"], identity["meta_seed"]
  run_dir = os.path.join(cells.run_dir, "meta", name)
  _announce(log, prefix, name, mconfig, run_dir)
  start = time.perf_counter() - _earlier_seconds(run_dir)
  lopt = architecture(identity["model"])
  improvements = []

  def keep(step, meta_params):
    save_optimizer(os.path.join(cells.run_dir, "optimizers", f"{name}@{step}"), lopt,
                   meta_params)
    improvements.append(step)

  try:
    result = meta.meta_train(
        lopt, task, mconfig, run_dir=run_dir, should_stop=should_stop,
        callback=_validation_lines(log, prefix, name, mconfig.num_meta_iterations, tracked,
                                   tracker),
        on_improvement=keep if keep_improvements else None)
  except meta.MetaTrainingInterrupted as e:
    atomic_files.write_json(os.path.join(run_dir, CELL_WALL_TIME_FILE),
                            {"seconds": time.perf_counter() - start})
    raise StudyInterrupted(f"meta-training {name}, meta-step {e.iteration}") from None
  except meta.MetaTrainingDivergedError as e:
    # Too large a coefficient can blow the meta-training up: a cell like a collapse, with
    # nothing to meta-test, instead of a run that stops (and stops again when resumed).
    log(f"{name}: {e}")
    return cells.put({
        **identity, "meta_steps_done": None,
        "best_validation_accuracy": float("-inf"), "best_meta_step": -1, "collapsed": True,
        "diverged": True, "validations": validations(run_dir), "export": None,
        "grad_ratio": {"ratio": float("nan")} if measure_ratio else None,
        "wall_time_s": time.perf_counter() - start}, "meta", name)
  if tracked is not None:
    tracked.finish(name)
  if keep_improvements and result.resumed_from is not None:
    # Improvements up to the checkpoint resumed from were exported by the earlier part(s)
    # (a meta-step's export comes before its checkpoint); later ones are made again.
    improvements = sorted({*improvements, *exported_improvements(
        cells.run_dir, name, up_to=result.resumed_from)})
  export = os.path.join(cells.run_dir, "optimizers", name)
  # A collapsed cell's export says so (evaluate warns); the sweep never chooses it.
  save_optimizer(export, lopt, result.meta_params, metadata=None if not result.collapsed else
                 {"status": result.status, "meta_step": result.selected_iteration})
  ratio = meta.gradient_ratio(lopt, task, mconfig, result.meta_params, jax.random.fold_in(
      jax.random.key(seed), 0x6AD)) if measure_ratio else None
  return cells.put({
      **identity, "meta_steps_done": int(result.meta_steps_done),
      "best_validation_accuracy": float(result.best_score),
      "best_meta_step": int(result.best_iteration), "collapsed": bool(result.collapsed),
      "skipped_meta_steps": int(result.num_skipped), "validations": validations(run_dir),
      "export": os.path.relpath(export, cells.run_dir),
      "improvements": improvements if keep_improvements else None,
      "grad_ratio": ratio, "wall_time_s": time.perf_counter() - start}, "meta", name)


def _announce(log, prefix: str, name: str, mconfig, run_dir: str) -> None:
  """The cell's first line (its budget and stop rule), and where it resumes, if it does."""
  stop_rule = (f", stops {mconfig.patience} without improvement after "
               f"{mconfig.min_meta_iterations}" if mconfig.patience else "")
  log(f"{prefix}meta-training {name} (up to {mconfig.num_meta_iterations} meta-steps"
      f"{stop_rule})")
  checkpoints_dir = os.path.join(run_dir, "checkpoints")
  saved = [int(d) for d in (os.listdir(checkpoints_dir) if os.path.isdir(checkpoints_dir)
                            else []) if d.isdigit()]
  if saved:  # an interrupted run: meta_train resumes from its newest intact checkpoint
    log(f"{prefix}resuming {name} at meta-step {max(saved)}")


def _validation_lines(log, prefix: str, name: str, cap: int, tracked, tracker):
  """meta_train's callback: tells `tracked` (the tracker, when the cell is one of its items)
  of every meta-step, and logs each validation with the study's ETA (`tracker`)."""
  def show(record):
    if tracked is not None:
      tracked.update(name, record["iteration"])
    if "validation_score" in record:
      rate = record.get("meta_steps_per_second", float("nan"))
      eta = f"; {tracker.line()}" if tracker is not None else ""
      log(f"{prefix}{name}: meta-step {record['iteration']}/{cap}, validation "
          f"{record['validation_score']:.4f}{' (collapsed)' if record['collapsed'] else ''}, "
          f"{rate:.1f} meta-steps/s{eta}")
  return show


CELL_WALL_TIME_FILE = "cell_wall_time.json"


def _earlier_seconds(run_dir: str) -> float:
  """Meta-training time spent in this run directory by interrupted earlier parts."""
  try:
    with open(os.path.join(run_dir, CELL_WALL_TIME_FILE)) as f:
      return float(json.load(f)["seconds"])
  except (OSError, ValueError, KeyError, TypeError):
    return 0.0


def exported_improvements(study_dir: str, name: str, up_to: int | None = None) -> list[int]:
  """The meta-steps of the improvement exports `optimizers/NAME@STEP` in a study folder.

  Args:
    study_dir: the study folder.
    name: the cell's name.
    up_to: only steps up to this one (None: all).

  Returns:
    The steps, increasing.
  """
  folder = os.path.join(study_dir, "optimizers")
  prefix = f"{name}@"
  found = os.listdir(folder) if os.path.isdir(folder) else []
  steps = sorted(int(d[len(prefix):]) for d in found
                 if d.startswith(prefix) and d[len(prefix):].isdigit())
  return [step for step in steps if up_to is None or step <= up_to]


def best_within(records: list[dict], budget: int) -> int | None:
  """The meta-step selection would pick among the validations up to `budget`.

  Args:
    records: validations, as `validations` returns them.
    budget: the last meta-step that may be picked.

  Returns:
    The meta-step of the best score among the validations up to `budget` that did not
    collapse (the earliest on a tie), or None when there is none.
  """
  best, best_score = None, -np.inf
  for v in records:
    if v["iteration"] <= budget and not v["collapsed"] and v["score"] > best_score:
      best, best_score = v["iteration"], v["score"]
  return best


def choose_coefficient(sweep: list[dict]) -> float | None:
  """The swept coefficient with the best validation accuracy that did not collapse.

  Args:
    sweep: meta-training cells of the sweep (with `coefficient`, `collapsed` and
      `best_validation_accuracy`).

  Returns:
    The coefficient (the smaller on a tie), or None when every cell collapsed.
  """
  alive = [c for c in sweep if not c["collapsed"]]
  if not alive:
    return None
  return max(alive, key=lambda c: (c["best_validation_accuracy"], -c["coefficient"]))["coefficient"]


def contender_identity(cell: dict) -> dict:
  """What the tables keep of a meta-training cell that is meta-tested.

  Args:
    cell: the meta-training cell, as `meta_train_cell` returns it.

  Returns:
    Its `model`, `regularizer`, `coefficient`, `meta_seed`, `best_meta_step`,
    `num_meta_iterations`, and its `collapsed` as `collapsed_in_meta_training`.
  """
  return {"model": cell["model"], "regularizer": cell["regularizer"],
          "coefficient": cell["coefficient"], "meta_seed": cell["meta_seed"],
          "best_meta_step": cell["best_meta_step"], "collapsed_in_meta_training":
          cell["collapsed"], "num_meta_iterations": cell["num_meta_iterations"]}


def loader(cells: Cells, cell: dict) -> Callable[[], Any]:
  """Builds a meta-training cell's exported optimizer when called.

  Args:
    cells: the study's cells (the export is under its run directory).
    cell: the meta-training cell; its `export` is the export's path in the run directory.

  Returns:
    A function of no arguments that loads the export as an `evaluation.Learned` (the
    meta-parameters an argument: one compilation per architecture and optimizee).
  """
  # meta-parameters as an argument: one compilation per architecture and optimizee
  return lambda: evaluation.Learned(*checkpoints.load_learned(
      os.path.join(cells.run_dir, cell["export"])))


# ------------------------------------------------------------------- meta-testing


def flatness_fn(s: Preset):
  """`measure(task, params, key)`: loss, Hessian trace, top eigenvalue and local-entropy
  gap on the flatness batch.

  Args:
    s: the preset: the flatness batch size, Hutchinson probes, Lanczos steps and the
      local-entropy gap's gamma and samples.

  Returns:
    The jitted `measure`, returning a dict with `flatness_batch_loss`, `hessian_trace`,
    `top_eigenvalue` and `entropy_gap`.
  """
  @jax.jit
  def measure(task, params, key):
    batch = task.fixed_batch(s.flatness_batch)
    f = lambda p: task.loss(p, batch)
    k1, k2, k3 = jax.random.split(key, 3)
    return {"flatness_batch_loss": f(params),
            "hessian_trace": flatness_lib.hessian_trace(f, params, k1,
                                                        num_probes=s.trace_probes),
            "top_eigenvalue": flatness_lib.lanczos(f, params, k2,
                                                   num_iters=s.lanczos_iters).top_eigenvalue,
            "entropy_gap": flatness_lib.local_entropy_gap(
                f, params, k3, gamma=s.entropy_gap_gamma, num_samples=s.entropy_gap_samples)}
  return measure


def smoothed_losses(train_loss: np.ndarray, eval_steps, window: int) -> list[float]:
  """Mean minibatch loss over the `window` steps before each evaluation step (NaN at 0).

  Args:
    train_loss: the run's minibatch loss at every step.
    eval_steps: the evaluation steps.
    window: how many steps before each evaluation are averaged.

  Returns:
    One value per evaluation step.
  """
  return [float(train_loss[max(0, t - window):t].mean()) if t else float("nan")
          for t in eval_steps]


def flatness_key(seed: int) -> jax.Array:
  """The key of a meta-test run's flatness measures (the same at the end and when matched).

  Args:
    seed: the meta-test run's seed.

  Returns:
    A JAX PRNG key derived from `seed`.
  """
  return jax.random.fold_in(jax.random.key(seed), 0xF1A7)


def run_test(task, tx, s: Preset, seed: int, num_steps: int, measure,
             snapshots: dict | None = None) -> dict:
  """One meta-test run; with `snapshots`, fills it with `step -> params` at each evaluation.

  Args:
    task: the optimizee.
    tx: the optimizer (an optax transformation or `evaluation.Learned`).
    s: the preset (its `eval_every`: evaluations and the training-loss smoothing window).
    seed: the run's seed (initialisation and batches; its flatness key, `flatness_key`).
    num_steps: training steps.
    measure: the flatness measure of the final parameters, as from `flatness_fn`.
    snapshots: a dict updated in place with the parameters (on the host) at each
      evaluation and the last step; None keeps none.

  Returns:
    A dict with `test_seed`, `eval_steps`, the curves `train_loss_curve` (smoothed),
    `test_accuracy_curve` and `test_loss_curve`, `initial_train_loss`, the final
    `train_loss`, `test_accuracy` and `test_loss`, `collapsed` (final training loss not
    finite or above `COLLAPSE_RATIO` times the initial), the final flatness and
    `wall_time_s`.
  """
  keep = ({*range(s.eval_every, num_steps + 1, s.eval_every), num_steps}
          if snapshots is not None else ())
  r = evaluation.train(task, tx, num_steps, jax.random.key(seed), eval_every=s.eval_every,
                       keep_params_at=keep)
  if snapshots is not None:
    snapshots.update(jax.device_get(r.params_at))  # host memory: every contender's runs
  curve = smoothed_losses(r.train_loss, r.eval_steps, s.eval_every)
  flat = {k: float(v) for k, v in
          measure(task, r.params, flatness_key(seed)).items()}
  initial = float(r.train_loss[0])
  final = curve[-1]
  return {"test_seed": seed, "eval_steps": [int(t) for t in r.eval_steps],
          "train_loss_curve": curve,
          "test_accuracy_curve": [float(v) for v in r.metrics["test"]["accuracy"]],
          "test_loss_curve": [float(v) for v in r.metrics["test"]["loss"]],
          "initial_train_loss": initial, "train_loss": final,
          "test_accuracy": float(r.metrics["test"]["accuracy"][-1]),
          "test_loss": float(r.metrics["test"]["loss"][-1]),
          "collapsed": bool(not np.isfinite(final) or final > meta.trainer.COLLAPSE_RATIO * initial),
          **flat, "wall_time_s": r.wall_time_s}


def matched_run(task, tx, s: Preset, run: dict, level: float, measure,
                snapshots: dict | None = None) -> dict:
  """Flatness of one meta-test run at the first evaluation where its training loss <= level.

  The parameters there come from the run's `snapshots` (`run_test`'s) when
  given, else from training the same seed again to that step (the same
  parameters: same initialisation and batches); either way the flatness key is
  the run's own, so both give the same figures.

  Args:
    task: the optimizee.
    tx: the run's optimizer.
    s: the preset, as for `run_test`.
    run: the meta-test run, as `run_test` returns it.
    level: the training-loss level (`matched_level`).
    measure: the flatness measure, as from `flatness_fn`.
    snapshots: the run's parameters by evaluation step, or None.

  Returns:
    A dict with `test_seed` and `step` (None when the level is never reached, and nothing
    else), `train_loss`, `hessian_trace`, `top_eigenvalue`, `entropy_gap` and, when the run
    has a test-loss curve, `test_loss` and `generalization_gap` there.
  """
  step = next((t for t, l in zip(run["eval_steps"], run["train_loss_curve"])
               if t and l <= level), None)
  if step is None:
    return {"test_seed": run["test_seed"], "step": None}
  if snapshots is None:
    again = run_test(task, tx, s, run["test_seed"], step, measure)
    train_loss = again["train_loss"]
    flat = {k: again[k] for k in ("hessian_trace", "top_eigenvalue", "entropy_gap")}
  else:
    train_loss = run["train_loss_curve"][run["eval_steps"].index(step)]
    flat = {k: float(v) for k, v in
            measure(task, snapshots[step], flatness_key(run["test_seed"])).items()}
  out = {"test_seed": run["test_seed"], "step": step, "train_loss": train_loss,
         "hessian_trace": flat["hessian_trace"], "top_eigenvalue": flat["top_eigenvalue"],
         "entropy_gap": flat["entropy_gap"]}
  if "test_loss_curve" in run:  # the generalization gap at the matched point
    out["test_loss"] = run["test_loss_curve"][run["eval_steps"].index(step)]
    out["generalization_gap"] = out["test_loss"] - train_loss
  return out


def matched_level(runs: list[dict], reach: float = 0.8) -> float:
  """The lowest training-loss level that at least `reach` of the runs that did not
  collapse get down to (NaN when every run collapsed).

  A run reaches a level when its smoothed training loss is at or below it at
  some evaluation (`matched_run` then measures it there). Collapsed runs (which
  stopped lowering the loss) are left out of the count: flatness is compared
  between optimizers that trained.

  Args:
    runs: meta-test runs, as `run_test` returns them.
    reach: the fraction of the runs that did not collapse that must reach the level.

  Returns:
    The level, or NaN (also when the level is not finite).
  """
  lows = sorted(min((v for v in r["train_loss_curve"] if np.isfinite(v)), default=np.inf)
                for r in runs if not r["collapsed"])
  if not lows:
    return float("nan")
  need = max(1, int(np.ceil(reach * len(lows) - 1e-9)))
  level = lows[need - 1]
  return float(level) if np.isfinite(level) else float("nan")


def tune(task, name: str, grid, s: Preset, should_stop) -> dict:
  """The learning rate of `grid` with the best validation accuracy at `test_horizon`.

  Args:
    task: the optimizee.
    name: the hand-designed optimizer (`optimizers.get`).
    grid: the learning rates tried.
    s: the preset: `test_horizon` steps, on `tuning_seeds` seeds (from
      `TUNING_SEED_BASE`).
    should_stop: polled before each learning rate.

  Returns:
    A dict with `optimizer`, `validation_accuracy` (rate -> mean over the seeds; -inf when
    one is not finite) and `learning_rate` (the best; the smaller on a tie).

  Raises:
    StudyInterrupted: when `should_stop()` returns True.
  """
  scores = {}
  for lr in grid:
    if should_stop():
      raise StudyInterrupted(f"tuning {name}")
    tx = optimizers.get(name, learning_rate=lr)
    accs = []
    for i in range(s.tuning_seeds):
      r = evaluation.train(task, tx, s.test_horizon, jax.random.key(TUNING_SEED_BASE + i),
                           eval_every=s.test_horizon, eval_splits=("validation",))
      accs.append(float(r.metrics["validation"]["accuracy"][-1]))
    scores[lr] = float(np.mean(accs)) if np.all(np.isfinite(accs)) else -np.inf
  best = max(grid, key=lambda lr: (scores[lr], -lr))
  return {"optimizer": name, "validation_accuracy": {f"{k:g}": v for k, v in scores.items()},
          "learning_rate": best}


def optimizee_tasks(config: StudyConfig) -> dict[str, Callable[[], Any]]:
  """The seen and unseen optimizees, built lazily (a dataset is loaded when first needed).

  Args:
    config: the study's configuration (its optimizees, datasets and data folder).

  Returns:
    Optimizee name -> a function of no arguments that builds its task once and returns
    it; mlp_sigmoid@other is the seen MLP on `other_dataset`.
  """
  made = {}

  def make(name, dataset):
    def build():
      if name not in made:
        made[name] = tasks.get(name.split("@")[0], dataset, data_dir=config.data_dir)
      return made[name]
    return build

  out = {n: make(n, config.dataset) for n in (SEEN,) + UNSEEN if n in config.optimizees}
  if OTHER_DATA in config.optimizees:
    out[OTHER_DATA] = make(OTHER_DATA, config.other_dataset)
  return out
