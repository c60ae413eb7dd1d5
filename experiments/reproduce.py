r"""The main job: meta-train L2O-DM, tune Adam, compare both on held-out seeds.

  python -m experiments.reproduce            # digits, mlp_sigmoid, ~4 minutes on 2 CPU cores

1. Meta-trains L2O-DM on the task (run directory RUN_DIR/l2o_dm; rerunning
   resumes), keeping the meta-parameters with the best validation accuracy.
2. Tunes Adam's learning rate on a small grid: lowest training loss at the
   meta-training horizon, on validation seeds.
3. Trains both on held-out seeds (never used above) for --long_horizon steps
   and reports, at the meta-training horizon and at the long horizon, the
   training loss, test accuracy and test loss (mean ± 95% interval over seeds).

Writes RUN_DIR/summary.json, RUN_DIR/metrics.jsonl and RUN_DIR/comparison.png.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import flags, logging

from experiments import _cli
from flatl2o import evaluation, meta, optimizers, report, tasks

_TASK = flags.DEFINE_enum("task", "mlp_sigmoid", tasks.names(), "Optimizee.")
_DATASET = flags.DEFINE_string("dataset", None, "Dataset (default digits).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir for prepared datasets.")
_ITERATIONS = flags.DEFINE_integer("num_meta_iterations", 1000, "Meta-steps of L2O-DM.",
                                   lower_bound=1)
_HORIZON = flags.DEFINE_integer("num_inner_steps", 200,
                                "Meta-training horizon (episode length).", lower_bound=1)
_LONG = flags.DEFINE_integer("long_horizon", 1000, "Longest meta-test horizon.", lower_bound=1)
_TEST_SEEDS = flags.DEFINE_integer("test_seeds", 5, "Held-out optimizee seeds.", lower_bound=2)
_SEED = flags.DEFINE_integer("seed", 0, "Meta-training seed.", lower_bound=0)
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


def main(argv):
  del argv
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
  config = meta.MetaTrainConfig(num_inner_steps=horizon, validation_horizon=horizon,
                                num_meta_iterations=_ITERATIONS.value, seed=_SEED.value)
  task = tasks.get(_TASK.value, _DATASET.value, data_dir=_DATA_DIR.value)
  lopt = optimizers.L2ODM()

  logging.info("1/3 meta-training L2O-DM for %d meta-steps", config.num_meta_iterations)
  trained = meta.meta_train(lopt, task, config, run_dir=os.path.join(_RUN_DIR.value, "l2o_dm"),
                            callback=_cli.progress_line(config.num_meta_iterations))

  logging.info("2/3 tuning Adam over %s", grid)
  tuning = {}
  for lr in grid:
    tx = optimizers.get("adam", learning_rate=lr)
    tuning[lr] = float(np.mean([
        _loss_at(evaluation.train(task, tx, horizon, jax.random.key(s), eval_every=horizon),
                 horizon) for s in TUNING_SEEDS]))
  best_lr = min(tuning, key=lambda lr: tuning[lr] if np.isfinite(tuning[lr]) else np.inf)

  logging.info("3/3 meta-testing on %d held-out seeds", _TEST_SEEDS.value)
  contenders = {f"adam (lr {best_lr:g})": optimizers.get("adam", learning_rate=best_lr),
                "l2o_dm": lopt.transform(trained.theta)}
  seeds = [TEST_SEED_BASE + i for i in range(_TEST_SEEDS.value)]
  results = {name: [evaluation.train(task, tx, long_horizon, jax.random.key(s),
                                     eval_every=horizon) for s in seeds]
             for name, tx in contenders.items()}

  records, rows = [], {}
  for name, runs in results.items():
    for seed, r in zip(seeds, runs):
      for step in r.eval_steps[1:]:
        records.append({"optimizer": name, "seed": seed, "step": int(step),
                        **_metrics_at(r, int(step))})
    for step in sorted({horizon, long_horizon}):
      finals = [_metrics_at(r, step) for r in runs]
      rows[f"{name} @ {step}"] = {m: report.summarize([f[m] for f in finals])
                                  for m in finals[0]}
  summary = {
      "task": task.name, "dataset": task.data.name if hasattr(task, "data") else None,
      "meta_training": {"config": config.__dict__, "best_validation_accuracy": trained.best_score,
                        "best_meta_step": trained.best_iteration,
                        "skipped_meta_steps": trained.num_skipped},
      "adam_tuning_train_loss": {str(k): v for k, v in tuning.items()},
      "adam_learning_rate": best_lr, "test_seeds": seeds, "results": rows,
  }
  report.write_json(os.path.join(_RUN_DIR.value, "summary.json"), summary)
  report.write_jsonl(os.path.join(_RUN_DIR.value, "metrics.jsonl"), records)
  png = os.path.join(_RUN_DIR.value, "comparison.png")
  wrote_png = report.plot_curves(png, results, title=f"{task.name} on {summary['dataset']}: "
                                 f"held-out seeds {seeds[0]}-{seeds[-1]}")

  print(f"L2O-DM: best validation accuracy {trained.best_score:.4f} at meta-step "
        f"{trained.best_iteration}; Adam learning rate {best_lr:g} (grid {grid})")
  print(f"{task.name} on {summary['dataset']}, {len(seeds)} held-out seeds "
        f"(mean ± 95% interval); '@ N' = after N inner steps")
  print(report.format_table(rows, ["train_loss", "test_accuracy", "test_loss"]))
  print(f"wrote {_RUN_DIR.value}/summary.json, metrics.jsonl" + (", comparison.png" if wrote_png
                                                                   else ""))


if __name__ == "__main__":
  _cli.run(main)
