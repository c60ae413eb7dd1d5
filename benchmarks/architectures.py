r"""Every learned architecture after a default meta-training, against tuned Adam, SAM and Entropy-SGD.

  python -m benchmarks.architectures                     # digits, all architectures
  python -m benchmarks.architectures --optimizers=rnnprop,l2o_scale --num_meta_iterations=200

For each learned architecture: `meta_train` with the default `MetaTrainConfig`
(meta-seed 0; L2O-Scale with its log-ratio meta-loss) on `mlp_sigmoid`, run
directories under `--run_dir` (a rerun reuses finished meta-trainings). Then
every optimizer trains fresh optimizees on `--test_seeds` held-out seeds (1000,
1001, ...; never seen in meta-training, validation or tuning) for
`--num_steps` steps. Adam's learning rate is tuned on a grid by the lowest
training loss at the meta-training horizon on tuning seeds 2000-2002 (as
`experiments.reproduce` does); SAM and Entropy-SGD run at their defaults.

One JSON line per optimizer: the training loss at the meta-training horizon
(mean of the 20 steps before it) and the test accuracy at 300 steps and at
`--num_steps` (a multiple of 100, at least 300), per
seed and summarized (mean, sd, 95% t-interval), and the paired difference of
test accuracy to tuned Adam on the same seeds; learned ones add their meta-
training time, best validation score and the meta-step it was taken at.
"""

import dataclasses
import json
import os
import time

import jax
import numpy as np
from absl import app, flags

from flatl2o import environment, evaluation, meta, optimizers, report, tasks

_OPTIMIZERS = flags.DEFINE_list("optimizers", None,
                                "Learned architectures (default: all registered).")
_DATASET = flags.DEFINE_string("dataset", "digits", "Dataset of mlp_sigmoid.")
_NUM_META_ITERATIONS = flags.DEFINE_integer("num_meta_iterations", None,
                                            "Meta-steps (default: MetaTrainConfig's).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 1000, "Meta-test horizon.")
_TEST_SEEDS = flags.DEFINE_integer("test_seeds", 5, "Held-out optimizee seeds.", lower_bound=2)
_ADAM_GRID = flags.DEFINE_list("adam_grid", ["0.001", "0.003", "0.01", "0.03"],
                               "Adam learning rates tried.")
_RUN_DIR = flags.DEFINE_string("run_dir", "runs/benchmarks/architectures",
                               "Folder of the meta-training runs.")

TEST_SEED_BASE = 1000
TUNING_SEEDS = range(2000, 2003)


def _loss_before(result, step: int, window: int = 20) -> float:
  return float(result.train_loss[max(0, step - window):step].mean())


EARLY_STEP = 300  # "comparable to Adam within 300 steps"


def _meta_test(task, tx, seeds, horizon, num_steps):
  runs = [evaluation.train(task, tx, num_steps, jax.random.key(s), eval_every=100,
                           eval_splits=("test",)) for s in seeds]
  early = [float(r.metrics["test"]["accuracy"][list(r.eval_steps).index(EARLY_STEP)])
           for r in runs]
  return ([_loss_before(r, horizon) for r in runs], [r.final("test")["accuracy"] for r in runs],
          early)


def main(argv):
  del argv
  names = _OPTIMIZERS.value or list(optimizers.learned_names())
  unknown = [n for n in names if n not in optimizers.learned_names()]
  if unknown:
    raise app.UsageError(f"unknown --optimizers {unknown[0]!r}; accepted: "
                         f"{', '.join(optimizers.learned_names())}")
  if _NUM_STEPS.value < EARLY_STEP or _NUM_STEPS.value % 100:
    raise app.UsageError(f"--num_steps must be a multiple of 100, at least {EARLY_STEP}")
  grid = [float(v) for v in _ADAM_GRID.value]
  task = tasks.get("mlp_sigmoid", _DATASET.value)
  defaults = meta.MetaTrainConfig()
  if _NUM_META_ITERATIONS.value:
    defaults = meta.MetaTrainConfig(num_meta_iterations=_NUM_META_ITERATIONS.value)
  horizon = defaults.num_inner_steps
  seeds = [TEST_SEED_BASE + i for i in range(_TEST_SEEDS.value)]
  common = {"benchmark": "architectures", "task": "mlp_sigmoid", "dataset": task.data.name,
            "meta_training_horizon": horizon, "num_steps": _NUM_STEPS.value,
            "test_seeds": seeds, **environment.describe()}

  tuning = {lr: np.mean([_loss_before(evaluation.train(
      task, optimizers.get("adam", learning_rate=lr), horizon, jax.random.key(s),
      eval_every=horizon, eval_splits=()), horizon) for s in TUNING_SEEDS]) for lr in grid}
  best_lr = min(grid, key=lambda lr: tuning[lr] if np.isfinite(tuning[lr]) else np.inf)
  contenders = {f"adam (lr {best_lr:g}, tuned on {grid})":
                (optimizers.get("adam", learning_rate=best_lr), {}),
                "sam (defaults)": (optimizers.get("sam"), {}),
                "entropy_sgd (defaults)": (optimizers.get("entropy_sgd"), {})}
  for name in names:
    lopt = optimizers.learned(name)
    config = dataclasses.replace(defaults, meta_loss=lopt.preferred_meta_loss)
    start = time.perf_counter()
    result = meta.meta_train(lopt, task, config, run_dir=os.path.join(_RUN_DIR.value, name))
    contenders[name] = (lopt.transform(result.meta_params), {
        "meta_train_s": round(time.perf_counter() - start, 1),
        "resumed_from": result.resumed_from, "meta_loss": config.meta_loss,
        "num_meta_iterations": config.num_meta_iterations,
        "best_validation_score": result.best_score, "best_iteration": result.best_iteration,
        "collapsed": result.collapsed})

  adam_accuracy = None
  for label, (tx, extra) in contenders.items():
    losses, accuracies, early = _meta_test(task, tx, seeds, horizon, _NUM_STEPS.value)
    line = {**common, "optimizer": label, **extra,
            "train_loss_at_horizon": report.summarize(losses),
            "test_accuracy": report.summarize(accuracies),
            f"test_accuracy_at_{EARLY_STEP}": report.summarize(early),
            "per_seed": {"train_loss_at_horizon": losses, "test_accuracy": accuracies,
                         f"test_accuracy_at_{EARLY_STEP}": early}}
    if adam_accuracy is None:
      adam_accuracy = accuracies
    else:
      line["test_accuracy_minus_adam"] = report.summarize(
          np.asarray(accuracies) - np.asarray(adam_accuracy))
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
  app.run(main)
