r"""Milliseconds per training step with each optimizer: what a drop-in learned optimizer costs.

  python -m benchmarks.inner_step --optimizer=all [--model=mlp,flax_cnn] [--dataset=idx:PATH]

For each model, Adam is timed first and every other optimizer right after it in
the same process, so `ratio_to_adam` compares like with like. Learned
optimizers run with fresh meta-parameters (`lopt.init`): the cost of a step does
not depend on their values. Models:
- `mlp`: mlp_sigmoid 784-20-10 (15,910 parameters), the meta-training optimizee.
- `flax_cnn`: the CNN of Flax's MNIST example (conv 32, conv 64 with 2x2 average
  pooling, dense 256, dense 10: 824,458 parameters).
The default data is random uint8 images of MNIST's shape (28x28x1, 10 classes,
10,000 examples), so the figure needs no download. Times `evaluation.train`'s
compiled chunk (lax.scan of `--steps` steps, batches drawn inside), median over
`--repeats` after one compiling call. One JSON line per (model, optimizer).
"""

import json
import statistics
import time

import flax.linen as nn
import jax
from absl import app, flags

from benchmarks import _common
from flatl2o import environment, evaluation, optimizers, tasks

MODELS = ("mlp", "flax_cnn")

_OPTIMIZER = flags.DEFINE_list(
    "optimizer", ["adam"], "Optimizers to time: hand-designed names, learned architectures "
    "(fresh meta-parameters), or 'all' (adam, sgd and every learned architecture).")
_MODEL = flags.DEFINE_list("model", ["mlp"], f"Models: {', '.join(MODELS)}.")
_DATASET = flags.DEFINE_string("dataset", None, "Dataset name; default: synthetic MNIST-sized.")
_STEPS = flags.DEFINE_integer("steps", 500, "Steps per timed chunk.", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed chunks.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Minibatch size.", lower_bound=1)


class FlaxExampleCNN(nn.Module):
  """The layer sizes of Flax's MNIST example: 2 convs with average pooling, 2 dense layers."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    for features in (32, 64):
      x = nn.relu(nn.Conv(features, (3, 3))(x))
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(256)(x))
    return nn.Dense(self.num_classes)(x)


def _optimizer_names() -> list[str]:
  learned = list(optimizers.learned_names())
  names = ["adam", "sgd", *learned] if _OPTIMIZER.value == ["all"] else _OPTIMIZER.value
  accepted = set(optimizers.names()) | set(learned)
  for name in names:
    if name not in accepted:
      raise app.UsageError(f"unknown --optimizer {name!r}; accepted: all, "
                           f"{', '.join(sorted(accepted))}")
  return ["adam"] + [n for n in names if n != "adam"]  # the baseline first


def _transformation(name: str):
  if name in optimizers.learned_names():
    lopt = optimizers.learned(name)
    return lopt.transform(lopt.init(jax.random.key(0)))
  return optimizers.get(name)


def _task(model: str):
  task = _common.mnist_shaped_task(_DATASET.value, num_examples=10_000,
                                   batch_size=_BATCH_SIZE.value)
  if model == "flax_cnn":
    task = tasks.ClassificationTask(data=task.data, model=FlaxExampleCNN(task.data.num_classes),
                                    name="flax_cnn", batch_size=_BATCH_SIZE.value)
  return task


def _ms_per_step(task, tx) -> tuple[float, float, float]:
  params = task.init(jax.random.key(0))
  opt_state = tx.init(params)
  run_chunk = evaluation.chunk_runner(tx)
  key = jax.random.key(1)
  start = time.perf_counter()
  jax.block_until_ready(run_chunk(task, params, opt_state, key, 0, _STEPS.value))
  first_call_s = time.perf_counter() - start
  times = []
  for r in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(run_chunk(task, params, opt_state, key, (r + 1) * _STEPS.value,
                                    _STEPS.value))
    times.append(time.perf_counter() - start)
  per_step = [1e3 * t / _STEPS.value for t in times]
  return statistics.median(per_step), min(per_step), first_call_s


def main(argv):
  del argv
  for model in _MODEL.value:
    if model not in MODELS:
      raise app.UsageError(f"unknown --model {model!r}; accepted: {', '.join(MODELS)}")
  names = _optimizer_names()
  env = environment.describe()
  for model in _MODEL.value:
    task = _task(model)
    num_params = int(sum(x.size for x in jax.tree.leaves(task.init(jax.random.key(0)))))
    adam_ms = None
    for name in names:
      ms, ms_min, first_call_s = _ms_per_step(task, _transformation(name))
      adam_ms = ms if name == "adam" else adam_ms
      print(json.dumps({
          "benchmark": "inner_step", "model": model, "optimizer": name,
          "dataset": task.data.name, "input_shape": list(task.data.input_shape),
          "num_params": num_params, "batch_size": _BATCH_SIZE.value,
          "steps_per_chunk": _STEPS.value, "ms_per_step": round(ms, 4),
          "ms_per_step_min": round(ms_min, 4), "ratio_to_adam": round(ms / adam_ms, 3),
          "first_call_s": round(first_call_s, 3), **env}), flush=True)


if __name__ == "__main__":
  app.run(main)
