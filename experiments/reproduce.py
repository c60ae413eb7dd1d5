r"""The main job: Adam against L2O-DM meta-trained plain and with each flatness term.

  python -m experiments.reproduce            # digits, mlp_sigmoid, ~5 minutes on 2 CPU cores

1. Meta-trains L2O-DM three ways, for each seed in --seeds: plain, with the
   Hessian-trace term (--alpha) and with the local-entropy term (--beta)
   (run directories RUN_DIR/VARIANT-sSEED; rerunning resumes), each keeping
   the meta-parameters with the best validation accuracy.
2. Tunes Adam's learning rate on a small grid: lowest training loss at the
   meta-training horizon, on validation seeds.
3. Trains every optimizer on held-out seeds (never used above) and reports, at
   the meta-training horizon and at --long_horizon: training loss, test
   accuracy, test loss, and the Hessian trace of the training loss at the
   final parameters. Intervals are over held-out seeds with one meta-training
   seed, and over meta-training seeds (of per-seed means) with several.

Writes RUN_DIR/summary.json, RUN_DIR/metrics.jsonl and RUN_DIR/comparison.png.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import flags, logging

from experiments import _cli
from flatl2o import evaluation, meta, optimizers, report, tasks

_TASK = flags.DEFINE_enum("task", "mlp_sigmoid", tasks.names(), "Optimizee.")
_DATASET = flags.DEFINE_string("dataset", None, "Dataset (default digits).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir for prepared datasets.")
_ITERATIONS = flags.DEFINE_integer("num_meta_iterations", 600,
                                   "Meta-steps of each L2O-DM variant.", lower_bound=1)
_HORIZON = flags.DEFINE_integer("num_inner_steps", 200,
                                "Meta-training horizon (episode length).", lower_bound=1)
_LONG = flags.DEFINE_integer("long_horizon", 1000, "Longest meta-test horizon.", lower_bound=1)
_TEST_SEEDS = flags.DEFINE_integer("test_seeds", 5, "Held-out optimizee seeds.", lower_bound=2)
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Meta-training seeds (comma-separated).")
_ALPHA = flags.DEFINE_float("alpha", 1.0, "Coefficient of the Hessian-trace term (trace / n).")
_BETA = flags.DEFINE_float("beta", 1.0, "Coefficient of the local-entropy term.")
_VARIANTS = flags.DEFINE_list("variants", ["plain", "hessian", "entropy"],
                              "Which L2O-DM variants to meta-train: plain, hessian, entropy.")
_ADAM_GRID = flags.DEFINE_list("adam_grid", ["0.001", "0.003", "0.01", "0.03", "0.1", "0.3"],
                               "Adam learning rates to tune over.")
_RUN_DIR = flags.DEFINE_string("run_dir", "runs/reproduce", "Output folder.")

# Seed ranges kept apart: validation (model selection, tuning) never meets test.
TUNING_SEEDS = range(2000, 2003)
TEST_SEED_BASE = 1000


def _loss_at(result, step: int, window: int = 20) -> float:
  return float(result.train_loss[max(0, step - window):step].mean())


def _metrics_at(result, step: int) -> dict[str, float]:
  i = int(np.searchsorted(result.eval_steps, step))
  return {"train_loss": _loss_at(result, step),
          **{f"test_{k}": float(v[i]) for k, v in result.metrics["test"].items()}}


def _parse_flags():
  horizon, long_horizon = _HORIZON.value, _LONG.value
  if long_horizon % horizon:
    raise ValueError(f"--long_horizon ({long_horizon}) must be a multiple of "
                     f"--num_inner_steps ({horizon})")
  grid = []
  for value in _ADAM_GRID.value:
    try:
      grid.append(float(value))
    except ValueError:
      raise ValueError(f"--adam_grid holds {value!r}; give positive numbers") from None
  if not grid or min(grid) <= 0:
    raise ValueError("--adam_grid must list positive learning rates")
  if not all(v.isdigit() for v in _SEEDS.value) or len(set(_SEEDS.value)) != len(_SEEDS.value):
    raise ValueError(f"--seeds must be distinct non-negative integers, got {_SEEDS.value}")
  regularizers = {"plain": meta.RegularizerConfig(),
                  "hessian": meta.RegularizerConfig(kind="hessian", alpha=_ALPHA.value),
                  "entropy": meta.RegularizerConfig(kind="entropy", beta=_BETA.value)}
  unknown = [v for v in _VARIANTS.value if v not in regularizers]
  if unknown or not _VARIANTS.value:
    raise ValueError(f"unknown --variants {unknown}; accepted: {', '.join(regularizers)}")
  variants = {f"l2o_dm{'' if v == 'plain' else ' + ' + v}": regularizers[v]
              for v in _VARIANTS.value}
  return horizon, long_horizon, grid, [int(v) for v in _SEEDS.value], variants


def main(argv):
  del argv
  horizon, long_horizon, grid, meta_seeds, variants = _parse_flags()
  # Every configuration is built (and so checked) before anything compiles.
  configs = {(name, seed): meta.MetaTrainConfig(
      num_inner_steps=horizon, validation_horizon=horizon,
      num_meta_iterations=_ITERATIONS.value, seed=seed, regularizer=reg)
             for seed in meta_seeds for name, reg in variants.items()}
  task = tasks.get(_TASK.value, _DATASET.value, data_dir=_DATA_DIR.value)
  lopt = optimizers.L2ODM()

  stop = _cli.StopRequests()
  resume_hint = (f"finished meta-trainings are kept in {_RUN_DIR.value}; rerun the same "
                 "command to continue")
  trained = {}
  for (name, seed), config in configs.items():
    logging.info("stage 1/3, meta-training run %d/%d: %s, seed %d, %d meta-steps",
                 len(trained) + 1, len(configs), name, seed,
                 config.num_meta_iterations)
    run_dir = os.path.join(_RUN_DIR.value, f"{name.replace(' + ', '_')}-s{seed}")
    try:
      trained[name, seed] = meta.meta_train(
          lopt, task, config, run_dir=run_dir,
          callback=_cli.progress_line(config.num_meta_iterations), should_stop=stop.requested)
    except meta.MetaTrainingInterrupted as e:
      stop.exit(f"interrupted at meta-step {e.iteration} of {name}, seed {seed} (checkpoint "
                f"saved); {resume_hint}")

  logging.info("stage 2/3: tuning Adam over %s", grid)
  tuning = {}
  tuning_start = time.perf_counter()
  for i, lr in enumerate(grid, start=1):
    if stop.requested():
      stop.exit(f"interrupted while tuning Adam; {resume_hint}")
    tx = optimizers.get("adam", learning_rate=lr)
    tuning[lr] = float(np.mean([
        _loss_at(evaluation.train(task, tx, horizon, jax.random.key(s), eval_every=horizon),
                 horizon) for s in TUNING_SEEDS]))
    per_lr = (time.perf_counter() - tuning_start) / i
    logging.info("stage 2/3: learning rate %d/%d (%g): training loss %.4f; ETA %ds", i,
                 len(grid), lr, tuning[lr], round(per_lr * (len(grid) - i)))
  best_lr = min(tuning, key=lambda lr: tuning[lr] if np.isfinite(tuning[lr]) else np.inf)

  test_seeds = [TEST_SEED_BASE + i for i in range(_TEST_SEEDS.value)]
  logging.info("stage 3/3: meta-testing on held-out seeds %s", test_seeds)
  adam_name = f"adam (lr {best_lr:g})"
  contenders = {(adam_name, None): optimizers.get("adam", learning_rate=best_lr)}
  for (name, seed), result in trained.items():
    label = name + (" (collapsed)" if result.collapsed else "")
    contenders[label, seed] = lopt.transform(result.meta_params)

  records, finals, curves = [], {}, {}
  total_runs, runs_done, testing_start = len(contenders) * len(test_seeds), 0, time.perf_counter()
  for (name, meta_seed), tx in contenders.items():
    for test_seed in test_seeds:
      if stop.requested():
        stop.exit(f"interrupted while meta-testing; {resume_hint}")
      r = evaluation.train(task, tx, long_horizon, jax.random.key(test_seed),
                           eval_every=horizon, flatness_at=(horizon, long_horizon))
      runs_done += 1
      per_run = (time.perf_counter() - testing_start) / runs_done
      logging.info("stage 3/3: run %d/%d (%s, test seed %d) done; ETA %ds", runs_done,
                   total_runs, name, test_seed, round(per_run * (total_runs - runs_done)))
      curves.setdefault(name, []).append(r)
      for step in sorted({horizon, long_horizon}):
        record = {"optimizer": name, "meta_seed": meta_seed, "test_seed": test_seed,
                  "step": step, **_metrics_at(r, step), **r.flatness[step]}
        records.append(record)
        finals.setdefault((name, step), {}).setdefault(meta_seed, []).append(record)

  columns = ["train_loss", "test_accuracy", "test_loss", "hessian_trace"]
  rows = {}
  for (name, step), by_seed in sorted(finals.items(), key=lambda kv: (kv[0][0] != adam_name,
                                                                       kv[0][0], kv[0][1])):
    if len(by_seed) > 1:  # several meta-training seeds: the interval is over them
      values = {m: [np.mean([r[m] for r in recs]) for recs in by_seed.values()]
                for m in columns}
    else:
      values = {m: [r[m] for r in next(iter(by_seed.values()))] for m in columns}
    rows[f"{name} @ {step}"] = {m: report.summarize(v) for m, v in values.items()}

  summary = {
      "task": task.name, "dataset": task.dataset_name,
      "meta_training": {
          f"{name} seed {seed}": {"best_validation_accuracy": r.best_score,
                                  "best_meta_step": r.best_iteration,
                                  "collapsed": r.collapsed, "skipped_meta_steps": r.num_skipped}
          for (name, seed), r in trained.items()},
      "num_meta_iterations": _ITERATIONS.value, "meta_seeds": meta_seeds,
      "alpha": _ALPHA.value, "beta": _BETA.value,
      "adam_tuning_train_loss": {str(k): v for k, v in tuning.items()},
      "adam_learning_rate": best_lr, "test_seeds": test_seeds, "results": rows,
  }
  report.write_json(os.path.join(_RUN_DIR.value, "summary.json"), summary)
  report.write_jsonl(os.path.join(_RUN_DIR.value, "metrics.jsonl"), records)
  png = os.path.join(_RUN_DIR.value, "comparison.png")
  wrote_png = report.plot_curves(png, curves, title=f"{task.name} on {summary['dataset']}: "
                                 f"held-out seeds {test_seeds[0]}-{test_seeds[-1]}",
                                 horizon=horizon)

  for (name, seed), r in trained.items():
    print(f"{name}, meta seed {seed}: best validation accuracy {r.best_score:.4f} at meta-step "
          f"{r.best_iteration}" + ("  COLLAPSED: stopped lowering the training loss"
                                   if r.collapsed else ""))
  print(f"Adam learning rate {best_lr:g} (grid {grid})")
  over = ("meta-training seeds" if len(meta_seeds) > 1 else f"{len(test_seeds)} held-out seeds")
  print(f"{task.name} on {summary['dataset']} (mean ± 95% interval over {over}); "
        "'@ N' = after N inner steps; hessian_trace of the training loss at the end")
  print(report.format_table(rows, columns))
  print(f"wrote {_RUN_DIR.value}/summary.json, metrics.jsonl" + (", comparison.png" if wrote_png
                                                                   else ""))


if __name__ == "__main__":
  _cli.run(main)
