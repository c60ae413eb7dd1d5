"""The reproduction protocol of Yang et al. (AISTATS 2023), as cached cells.

The paper claims that a flatness term in the meta-objective improves the test
accuracy of the models a learned optimizer trains (*optimizee* generalization)
"on multiple sophisticated L2O models and diverse optimizees", and keeps this
apart from *optimizer* generalization: how well the learned optimizer trains
optimizees it never saw. The protocol:

1. **Coefficient sweep** (L2O-DM, the first meta-training seed): meta-train with
   the Hessian-trace term at each `alphas` value and the local-entropy term at
   each `betas` value. The coefficient of each term used everywhere else is the
   one with the best *validation* accuracy among those that did not collapse.
2. **Meta-training**: every model of `models` with every regularizer (none,
   Hessian at the chosen alpha, entropy at the chosen beta) and every seed of
   `meta_seeds`, on `mlp_sigmoid` of the main dataset. Each keeps its best
   validated meta-parameters (validation split, never test).
3. **Same-budget plain**: for each regularized optimizer selected at meta-step
   b, the plain one of the same model and seed selected among its validations
   up to b (a rerun stopped at b when its own best came later), so an effect
   that is only "less meta-training" shows up as such.
4. **Baselines**: Adam and SGD tuned on `adam_grid` / `sgd_grid` by validation
   accuracy at `test_horizon` on tuning seeds; SAM and Entropy-SGD at their
   library defaults.
5. **Meta-test** every contender on the seen optimizee and the unseen ones
   (`mlp_relu`, `mlp_deep`, `conv`, and `mlp_sigmoid` on `other_dataset`) for
   `test_horizon` steps (longer than the meta-training horizon) on held-out
   seeds shared by every contender (paired: same initialisation and batches).
6. **Matched-loss flatness**: per optimizee, the level is the median final
   training loss of the runs that did not collapse; the Hessian trace and top
   eigenvalue are measured at the first evaluation step at which each run's
   training loss reaches that level (and at the end), on the parameters the run
   kept there (a run cached by an earlier process is trained again to that step:
   the same parameters).

Every stage's result is a JSON *cell* under `run_dir/cells/` (meta-trainings
also keep their own resumable run directories under `run_dir/meta/`): an
interrupted run continues where it stopped; `run_dir/protocol.json` pins the
configuration and a folder of another one is refused before anything is written.
`summarize()` turns the cells into `results.json`, `results.md` and figures.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shlex
import time
from typing import Any, Callable

import jax
import numpy as np

import flatl2o
from experiments import _config_flags
from flatl2o import checkpoints, evaluation, meta, optimizers, report, tasks
from flatl2o import flatness as flatness_lib

MODELS = ("l2o_dm", "rnnprop", "l2o_scale", "mlp_lopt", "l2o_dm_enhanced")
REGULARIZERS = ("none", "hessian", "entropy")
BASELINES = ("adam", "sgd", "sam", "entropy_sgd")
SEEN = "mlp_sigmoid"
UNSEEN = ("mlp_relu", "mlp_deep", "conv")
OTHER_DATA = "mlp_sigmoid@other"  # the seen model on the other dataset

# Seed ranges kept apart: tuning (validation) never meets test.
TUNING_SEED_BASE = 2000
TEST_SEED_BASE = 1000


@dataclasses.dataclass(frozen=True)
class Preset:
  """Budgets of one reproduction.

  Attributes:
    meta_seeds: meta-training seeds of every model x regularizer.
    num_meta_iterations, unroll_length, num_inner_steps, meta_batch_size,
      validation_every, validation_seeds: `MetaTrainConfig` fields (the
      meta-training horizon is `num_inner_steps`; validation at that horizon).
    alphas, betas: the coefficient sweep of the Hessian and entropy terms.
    adam_grid, sgd_grid: learning rates the baselines are tuned over.
    tuning_seeds: optimizee seeds of the baselines' tuning runs.
    test_seeds: held-out optimizee seeds of every meta-test.
    test_horizon: meta-test training steps (a multiple of `eval_every`).
    eval_every: steps between evaluations of the meta-test runs.
    flatness_batch, trace_probes, lanczos_iters: how flatness is measured
      (training examples, Hutchinson probes, Lanczos steps).
  """

  meta_seeds: tuple[int, ...]
  num_meta_iterations: int
  unroll_length: int
  num_inner_steps: int
  meta_batch_size: int
  validation_every: int
  validation_seeds: int
  alphas: tuple[float, ...]
  betas: tuple[float, ...]
  adam_grid: tuple[float, ...]
  sgd_grid: tuple[float, ...]
  tuning_seeds: int
  test_seeds: int
  test_horizon: int
  eval_every: int
  flatness_batch: int
  trace_probes: int
  lanczos_iters: int


PRESETS = {
    # Every cell at tiny budgets (the tests run it): numbers mean nothing.
    "smoke": Preset(meta_seeds=(0, 1), num_meta_iterations=4, unroll_length=5,
                    num_inner_steps=10, meta_batch_size=2, validation_every=2,
                    validation_seeds=1, alphas=(10.0,), betas=(10.0,),
                    adam_grid=(0.01, 0.1), sgd_grid=(0.1, 1.0), tuning_seeds=1, test_seeds=2,
                    test_horizon=20, eval_every=10, flatness_batch=64, trace_probes=2,
                    lanczos_iters=3),
    # Meant for about an hour on 2 CPU cores; with conv it takes longer (docs/results.md
    # has the measured time and where it goes).
    "cpu": Preset(meta_seeds=(0, 1), num_meta_iterations=120, unroll_length=20,
                  num_inner_steps=100, meta_batch_size=4, validation_every=20,
                  validation_seeds=2, alphas=(1.0, 30.0, 1000.0, 30000.0),
                  betas=(0.3, 3.0, 30.0), adam_grid=(0.003, 0.01, 0.03, 0.1),
                  sgd_grid=(0.1, 0.3, 1.0, 3.0), tuning_seeds=2, test_seeds=3,
                  test_horizon=300, eval_every=50, flatness_batch=512, trace_probes=8,
                  lanczos_iters=10),
    # Meant for one H200 (not yet run on one: no device lent; its time is not measured).
    "gpu": Preset(meta_seeds=(0, 1, 2, 3, 4), num_meta_iterations=1000, unroll_length=20,
                  num_inner_steps=200, meta_batch_size=64, validation_every=50,
                  validation_seeds=8, alphas=(1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0),
                  betas=(0.1, 1.0, 10.0, 100.0, 1000.0), adam_grid=(0.001, 0.003, 0.01, 0.03, 0.1),
                  sgd_grid=(0.03, 0.1, 0.3, 1.0, 3.0), tuning_seeds=4, test_seeds=10,
                  test_horizon=1000, eval_every=100, flatness_batch=2048, trace_probes=32,
                  lanczos_iters=20),
}


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
  """What one reproduction computes (pinned in `run_dir/protocol.json`)."""

  preset: str = "cpu"
  dataset: str = "digits"
  other_dataset: str | None = None
  data_dir: str | None = None
  models: tuple[str, ...] = MODELS
  regularizers: tuple[str, ...] = REGULARIZERS
  # None: every optimizee there is data for (mlp_sigmoid@other only with other_dataset).
  optimizees: tuple[str, ...] | None = None

  def __post_init__(self):
    if self.preset not in PRESETS:
      raise ValueError(f"unknown preset {self.preset!r}; accepted: {', '.join(PRESETS)}")
    if self.optimizees is None:
      object.__setattr__(self, "optimizees", (SEEN,) + UNSEEN + (
          (OTHER_DATA,) if self.other_dataset is not None else ()))
    elif OTHER_DATA in self.optimizees and self.other_dataset is None:
      raise ValueError(f"optimizee {OTHER_DATA} is the seen MLP on a second dataset: give "
                       "other_dataset (--other_dataset=idx:PATH, digits or a TFDS name) or "
                       "leave it out of the optimizees")
    object.__setattr__(self, "models", tuple(self.models))
    object.__setattr__(self, "regularizers", tuple(self.regularizers))
    object.__setattr__(self, "optimizees", tuple(self.optimizees))
    for what, given, accepted in (("model", self.models, MODELS),
                                  ("regularizer", self.regularizers, REGULARIZERS),
                                  ("optimizee", self.optimizees, (SEEN,) + UNSEEN + (OTHER_DATA,))):
      unknown = [v for v in given if v not in accepted]
      if unknown or not given or len(set(given)) != len(given):
        raise ValueError(f"unknown or repeated {what}s {unknown or list(given)}; accepted: "
                         f"{', '.join(accepted)}")
    if SEEN not in self.optimizees:
      raise ValueError(f"optimizees must include {SEEN!r}, the optimizee of meta-training")
    if "none" not in self.regularizers:
      raise ValueError("regularizers must include 'none': every effect is measured against "
                       "the plain optimizer")

  @property
  def settings(self) -> Preset:
    return PRESETS[self.preset]

  def identity(self) -> dict[str, Any]:
    return {"protocol": 1, **dataclasses.asdict(self), "settings": dataclasses.asdict(self.settings)}


def _upgrade_identity(identity: dict) -> dict:
  """An identity as this version writes it: before 2026-12-03 the optimizees listed
  mlp_sigmoid@other even without an other_dataset (it was skipped)."""
  optimizees = identity.get("optimizees")
  if identity.get("other_dataset") is None and isinstance(optimizees, list):
    identity = {**identity, "optimizees": [o for o in optimizees if o != OTHER_DATA]}
  return identity


class ProtocolInterrupted(Exception):
  """`should_stop` returned True; every finished cell is kept."""


# --------------------------------------------------------------------------- cells


class Cells:
  """JSON cells in `run_dir/cells/`, written atomically; the run directory's identity."""

  def __init__(self, run_dir: str, config: ProtocolConfig):
    self.run_dir = run_dir
    identity = json.loads(json.dumps(config.identity()))
    path = os.path.join(run_dir, "protocol.json")
    if os.path.exists(path):
      with open(path) as f:
        found = json.load(f)
      found = _upgrade_identity(found)
      # A field an older protocol.json lacks counts as its default.
      defaults = json.loads(json.dumps(ProtocolConfig(
          preset=config.preset, other_dataset=found.get("other_dataset")).identity()))
      found = {**{k: defaults[k] for k in defaults if k not in found}, **found}
      if found != identity:
        changed = sorted(k for k in set(found) | set(identity) if found.get(k) != identity.get(k))
        raise ValueError(f"run directory {run_dir} holds a reproduction of another "
                         f"configuration (differs in {', '.join(changed)}); pass another "
                         "--run_dir or remove it")
    else:
      report.write_json(path, identity)

  def path(self, *parts: str) -> str:
    return os.path.join(self.run_dir, "cells", *parts[:-1], parts[-1] + ".json")

  def get(self, *parts: str) -> dict | None:
    path = self.path(*parts)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)

  def put(self, value: dict, *parts: str) -> dict:
    report.write_json(self.path(*parts), value)
    return value


# ---------------------------------------------------------------- meta-training


def regularizer_label(kind: str, coefficient: float | None) -> str:
  return "none" if kind == "none" else f"{kind}-{coefficient:g}"


def _meta_config(model: str, kind: str, coefficient: float | None, seed: int, s: Preset,
                 num_meta_iterations: int | None = None) -> meta.MetaTrainConfig:
  if kind == "none":
    reg = meta.RegularizerConfig()
  else:
    reg = meta.RegularizerConfig(kind=kind, **{"hessian": {"alpha": coefficient},
                                               "entropy": {"beta": coefficient}}[kind])
  extra = {}
  if model == "l2o_dm_enhanced":  # Chen et al. 2020: horizon curriculum + imitation of Adam
    u, h = s.unroll_length, s.num_inner_steps
    horizons = sorted({max(u, (h // 4) // u * u), max(u, (h // 2) // u * u), h})
    extra = {"imitation_ratio": 0.2}
    if len(horizons) > 1:
      extra.update(curriculum=True, curriculum_horizons=tuple(horizons))
  lopt = _architecture(model)
  return meta.MetaTrainConfig(
      unroll_length=s.unroll_length, num_inner_steps=s.num_inner_steps,
      meta_batch_size=s.meta_batch_size,
      num_meta_iterations=num_meta_iterations or s.num_meta_iterations,
      validation_every=s.validation_every, validation_horizon=s.num_inner_steps,
      validation_seeds=s.validation_seeds, checkpoint_every=s.validation_every,
      log_every=s.validation_every, seed=seed, regularizer=reg, num_devices=1,
      meta_loss=getattr(lopt, "preferred_meta_loss", "mean"), **extra)


def meta_train_command(config: ProtocolConfig, model: str, kind: str, coefficient: float | None,
                       seed: int) -> str:
  """The `experiments.meta_train` command that meta-trains this protocol cell on its own.

  Same configuration, task and data, so the same meta-parameters (on the same
  machine and versions) as the cell's export.
  """
  mconfig = _meta_config(model, kind, coefficient, seed, config.settings)
  args = [f"--optimizer={_architecture(model).name}", f"--task={SEEN}",
          f"--dataset={config.dataset}"]
  if config.data_dir:
    args.append(f"--data_dir={config.data_dir}")
  args += _config_flags.command_args(mconfig, renames=_config_flags.META_TRAIN_RENAMES)
  return "python -m experiments.meta_train " + shlex.join(args)


def _architecture(model: str):
  return optimizers.learned("l2o_dm" if model == "l2o_dm_enhanced" else model)


def _validations(run_dir: str) -> list[dict]:
  """Every validation of a meta-training run directory, in order (resumes included)."""
  records = {}
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      if "validation_score" in r:
        records[r["iteration"]] = {"iteration": r["iteration"], "score": r["validation_score"],
                                   "collapsed": bool(r["collapsed"])}
  return [records[k] for k in sorted(records)]


def meta_train_cell(cells: Cells, config: ProtocolConfig, task, model: str, kind: str,
                    coefficient: float | None, seed: int, should_stop,
                    num_meta_iterations: int | None = None, log=print) -> dict:
  """Meta-trains one optimizer (or returns its cached cell); exports it in the run dir."""
  name = f"{model}-{regularizer_label(kind, coefficient)}-s{seed}"
  if num_meta_iterations is not None:
    name += f"-budget{num_meta_iterations}"
  cached = cells.get("meta", name)
  if cached is not None:
    return cached
  s = config.settings
  mconfig = _meta_config(model, kind, coefficient, seed, s, num_meta_iterations)
  run_dir = os.path.join(cells.run_dir, "meta", name)
  log(f"meta-training {name} ({mconfig.num_meta_iterations} meta-steps)")
  start = time.perf_counter()
  lopt = _architecture(model)
  try:
    result = meta.meta_train(lopt, task, mconfig, run_dir=run_dir, callback=lambda r: None,
                             should_stop=should_stop)
  except meta.MetaTrainingInterrupted as e:
    raise ProtocolInterrupted(f"meta-training {name}, meta-step {e.iteration}") from None
  except meta.MetaTrainingDivergedError as e:
    # Too large a coefficient can blow the meta-training up: a cell like a collapse, with
    # nothing to meta-test, instead of a run that stops (and stops again when resumed).
    log(f"{name}: {e}")
    return cells.put({
        "name": name, "model": model, "regularizer": kind, "coefficient": coefficient,
        "meta_seed": seed, "num_meta_iterations": mconfig.num_meta_iterations,
        "best_validation_accuracy": float("-inf"), "best_meta_step": -1, "collapsed": True,
        "diverged": True, "validations": _validations(run_dir), "export": None,
        "wall_time_s": time.perf_counter() - start}, "meta", name)
  export = os.path.join(cells.run_dir, "optimizers", name)
  flatl2o.save_optimizer(export, lopt, result.meta_params)
  return cells.put({
      "name": name, "model": model, "regularizer": kind, "coefficient": coefficient,
      "meta_seed": seed, "num_meta_iterations": mconfig.num_meta_iterations,
      "best_validation_accuracy": float(result.best_score),
      "best_meta_step": int(result.best_iteration), "collapsed": bool(result.collapsed),
      "skipped_meta_steps": int(result.num_skipped), "validations": _validations(run_dir),
      "export": os.path.relpath(export, cells.run_dir),
      "wall_time_s": time.perf_counter() - start}, "meta", name)


def best_within(validations: list[dict], budget: int) -> int | None:
  """The meta-step selection would pick among the validations up to `budget`."""
  best, best_score = None, -np.inf
  for v in validations:
    if v["iteration"] <= budget and not v["collapsed"] and v["score"] > best_score:
      best, best_score = v["iteration"], v["score"]
  return best


def choose_coefficient(sweep: list[dict]) -> float | None:
  """The swept coefficient with the best validation accuracy that did not collapse."""
  alive = [c for c in sweep if not c["collapsed"]]
  if not alive:
    return None
  return max(alive, key=lambda c: (c["best_validation_accuracy"], -c["coefficient"]))["coefficient"]


# ------------------------------------------------------------------- meta-testing


def _flatness_fn(s: Preset):
  @jax.jit
  def measure(task, params, key):
    batch = task.fixed_batch(s.flatness_batch)
    f = lambda p: task.loss(p, batch)
    k1, k2 = jax.random.split(key)
    return {"flatness_batch_loss": f(params),
            "hessian_trace": flatness_lib.hessian_trace(f, params, k1,
                                                        num_probes=s.trace_probes),
            "top_eigenvalue": flatness_lib.lanczos(f, params, k2,
                                                   num_iters=s.lanczos_iters).top_eigenvalue}
  return measure


def smoothed_losses(train_loss: np.ndarray, eval_steps, window: int) -> list[float]:
  """Mean minibatch loss over the `window` steps before each evaluation step (NaN at 0)."""
  return [float(train_loss[max(0, t - window):t].mean()) if t else float("nan")
          for t in eval_steps]


def run_test(task, tx, s: Preset, seed: int, num_steps: int, measure,
             snapshots: dict | None = None) -> dict:
  """One meta-test run; with `snapshots`, fills it with `step -> params` at each evaluation."""
  keep = ({*range(s.eval_every, num_steps + 1, s.eval_every), num_steps}
          if snapshots is not None else ())
  r = evaluation.train(task, tx, num_steps, jax.random.key(seed), eval_every=s.eval_every,
                       keep_params_at=keep)
  if snapshots is not None:
    snapshots.update(jax.device_get(r.params_at))  # host memory: every contender's runs
  curve = smoothed_losses(r.train_loss, r.eval_steps, s.eval_every)
  flat = {k: float(v) for k, v in
          measure(task, r.params, _flatness_key(seed)).items()}
  initial = float(r.train_loss[0])
  final = curve[-1]
  return {"test_seed": seed, "eval_steps": [int(t) for t in r.eval_steps],
          "train_loss_curve": curve,
          "test_accuracy_curve": [float(v) for v in r.metrics["test"]["accuracy"]],
          "initial_train_loss": initial, "train_loss": final,
          "test_accuracy": float(r.metrics["test"]["accuracy"][-1]),
          "test_loss": float(r.metrics["test"]["loss"][-1]),
          "collapsed": bool(not np.isfinite(final) or final > meta.trainer.COLLAPSE_RATIO * initial),
          **flat, "wall_time_s": r.wall_time_s}


def _flatness_key(seed: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), 0xF1A7)


def matched_run(task, tx, s: Preset, run: dict, level: float, measure,
                snapshots: dict | None = None) -> dict:
  """Flatness of one meta-test run at the first evaluation where its training loss <= level.

  The parameters there come from the run's `snapshots` (`run_test`'s) when
  given, else from training the same seed again to that step (the same
  parameters: same initialisation and batches); either way the flatness key is
  the run's own, so both give the same figures.
  """
  step = next((t for t, l in zip(run["eval_steps"], run["train_loss_curve"])
               if t and l <= level), None)
  if step is None:
    return {"test_seed": run["test_seed"], "step": None}
  if snapshots is None:
    again = run_test(task, tx, s, run["test_seed"], step, measure)
    train_loss = again["train_loss"]
    flat = {k: again[k] for k in ("hessian_trace", "top_eigenvalue")}
  else:
    train_loss = run["train_loss_curve"][run["eval_steps"].index(step)]
    flat = {k: float(v) for k, v in
            measure(task, snapshots[step], _flatness_key(run["test_seed"])).items()}
  return {"test_seed": run["test_seed"], "step": step, "train_loss": train_loss,
          "hessian_trace": flat["hessian_trace"], "top_eigenvalue": flat["top_eigenvalue"]}


def tune(task, name: str, grid, s: Preset, should_stop) -> dict:
  """The learning rate of `grid` with the best validation accuracy at `test_horizon`."""
  scores = {}
  for lr in grid:
    if should_stop():
      raise ProtocolInterrupted(f"tuning {name}")
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


# ------------------------------------------------------------------- the protocol


def optimizee_tasks(config: ProtocolConfig) -> dict[str, Callable[[], Any]]:
  """The seen and unseen optimizees, built lazily (a dataset is loaded when first needed)."""
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


def run(config: ProtocolConfig, run_dir: str, should_stop=lambda: False, log=print) -> dict:
  """Runs (or continues) every cell of the protocol, then writes the outputs."""
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
      raise ProtocolInterrupted(where)

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
      contenders[cell["name"]] = {**_identity_of(cell), "make": _loader(cells, cell)}
  for key, cell in same_budget.items():
    if cell["name"] not in contenders and cell["export"] is not None:
      contenders[cell["name"]] = {**_identity_of(cell), "make": _loader(cells, cell),
                                  "seen_only": True}
  for kind, cells_of_kind in sweep.items():
    for cell in cells_of_kind:
      if cell["name"] not in contenders and cell["export"] is not None:
        contenders[cell["name"]] = {**_identity_of(cell), "make": _loader(cells, cell),
                                    "seen_only": True}

  # 5. Meta-test every contender x optimizee x test seed; 6. flatness at matched training
  # loss, per optimizee once all its runs are in (the level is their median). Runs made in
  # this process keep their parameters at every evaluation, so matching needs no replay.
  measure = _flatness_fn(s)
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


def _identity_of(cell: dict) -> dict:
  return {"model": cell["model"], "regularizer": cell["regularizer"],
          "coefficient": cell["coefficient"], "meta_seed": cell["meta_seed"],
          "best_meta_step": cell["best_meta_step"], "collapsed_in_meta_training":
          cell["collapsed"], "num_meta_iterations": cell["num_meta_iterations"]}


def _loader(cells: Cells, cell: dict):
  # meta-parameters as an argument: one compilation per architecture and optimizee
  return lambda: evaluation.Learned(*checkpoints.load_learned(
      os.path.join(cells.run_dir, cell["export"])))


# ------------------------------------------------------------------- statistics


def group_label(model: str, kind: str | None, coefficient: float | None) -> str:
  return model if kind in (None, "none") else f"{model} + {kind} ({coefficient:g})"


METRICS = ("train_loss", "test_accuracy", "hessian_trace", "top_eigenvalue")


def _by_seed(cells: list[dict], metric: str, matched: bool = False) -> dict[Any, dict[int, float]]:
  """meta_seed -> test_seed -> value (NaN where a matched level was not reached)."""
  out: dict[Any, dict[int, float]] = {}
  for c in cells:
    value = c[metric] if not matched else (c["matched"].get(metric) if c["matched"]["step"]
                                           is not None else float("nan"))
    out.setdefault(c["meta_seed"], {})[c["test_seed"]] = float(value)
  return out


def _over_seeds(by_seed: dict[Any, dict[int, float]]) -> dict[str, float]:
  """Mean and 95% interval: over meta-training seeds (of per-seed means) when there are
  several, else over test seeds."""
  if len(by_seed) > 1:
    values = [np.nanmean(list(v.values())) for v in by_seed.values()]
  else:
    values = list(next(iter(by_seed.values())).values())
  values = [v for v in values if np.isfinite(v)]
  return report.summarize(values) if values else {"mean": float("nan"), "ci95": float("nan"),
                                                  "n": 0}


def _paired(a: dict[Any, dict[int, float]], b: dict[Any, dict[int, float]]) -> dict[str, float]:
  """a - b paired on meta seed and test seed; interval as in `_over_seeds`."""
  diffs = {m: {t: a[m][t] - b[m][t] for t in a[m] if t in b.get(m, {})} for m in a if m in b}
  diffs = {m: d for m, d in diffs.items() if d}
  return _over_seeds(diffs) if diffs else {"mean": float("nan"), "ci95": float("nan"), "n": 0}


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
      row = {m: _over_seeds(_by_seed(cs, m)) for m in METRICS}
      row.update({f"{m}_matched": _over_seeds(_by_seed(cs, m, matched=True))
                  for m in ("hessian_trace", "top_eigenvalue")})
      row["collapsed_runs"] = sum(c["collapsed"] for c in cs)
      row["matched_reached"] = sum(c["matched"]["step"] is not None for c in cs)
      row["runs"] = len(cs)
      row["meta_steps"] = sorted({c["best_meta_step"] for c in cs if "best_meta_step" in c})
      first = cs[0]
      if first["regularizer"] not in (None, "none"):
        plain = [c for c in here if c["model"] == first["model"] and c["regularizer"] == "none"]
        row["test_accuracy_minus_plain"] = _paired(_by_seed(cs, "test_accuracy"),
                                                   _by_seed(plain, "test_accuracy"))
        budget_names = {same_budget.get(c["contender"]) for c in cs}
        budget = [c for c in results["cells"] if c["optimizee"] == optimizee
                  and c["contender"] in budget_names]
        if budget and optimizee == SEEN:  # same-budget reruns are meta-tested there only
          row["test_accuracy_minus_plain_same_budget"] = _paired(
              _by_seed(cs, "test_accuracy"), _by_seed(budget, "test_accuracy"))
      rows[label] = row
    table[optimizee] = rows
  return table


def _fmt(s: dict | None, digits: int = 3) -> str:
  if not s or not np.isfinite(s.get("mean", float("nan"))):
    return "—"
  ci = s.get("ci95", float("nan"))
  return f"{s['mean']:.{digits}g}" + (f" ± {ci:.2g}" if np.isfinite(ci) else "")


def markdown(results: dict, table: dict) -> str:
  lines = []
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


# ----------------------------------------------------------------------- figures


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

  def save(fig, name):
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
      by_seed = _by_seed(cs, "test_accuracy")
      ys = ([np.nanmean(list(v.values())) for v in by_seed.values()] if len(by_seed) > 1
            else list(next(iter(by_seed.values())).values()))
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


def write_outputs(results: dict, out_dir: str) -> dict:
  """results.json, results.md and the figures; returns the table."""
  table = summarize(results)
  report.write_json(os.path.join(out_dir, "results.json"), {**results, "table": table})
  report.write_text(os.path.join(out_dir, "results.md"), markdown(results, table))
  figures(results, table, out_dir)
  return table


def cell_names(run_dir: str) -> list[str]:
  """Every cached cell, relative to `run_dir/cells` (for progress and tests)."""
  root = os.path.join(run_dir, "cells")
  return sorted(os.path.relpath(p, root)[:-5]
                for p in glob.glob(os.path.join(root, "**", "*.json"), recursive=True))
