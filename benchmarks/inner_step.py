r"""Milliseconds per training step: adam on mlp_sigmoid with MNIST-sized input.

  python -m benchmarks.inner_step [--dataset=idx:PATH] [--steps=1000] [--repeats=5]

The default data is random uint8 images of MNIST's shape (28x28x1, 10 classes,
10,000 examples), so the figure needs no download; pass --dataset for real data.
Times `evaluation.train`'s compiled chunk (lax.scan of `steps` steps, batches
drawn inside), median over repeats, after one compiling call. Prints one JSON line.
"""

import json
import statistics
import time

import jax
from absl import app, flags

from benchmarks import _common
from flatl2o import environment, evaluation, optimizers

_DATASET = flags.DEFINE_string("dataset", None, "Dataset name; default: synthetic MNIST-sized.")
_STEPS = flags.DEFINE_integer("steps", 1000, "Steps per timed chunk.", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed chunks.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Minibatch size.", lower_bound=1)


def main(argv):
  del argv
  task = _common.mnist_shaped_task(_DATASET.value, num_examples=10_000,
                                   batch_size=_BATCH_SIZE.value)
  dataset = task.data
  tx = optimizers.get("adam")
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
  ms = 1e3 * statistics.median(times) / _STEPS.value
  print(json.dumps({
      "benchmark": "inner_step",
      "task": "mlp_sigmoid",
      "optimizer": "adam",
      "dataset": dataset.name,
      "input_shape": list(dataset.input_shape),
      "num_params": int(sum(x.size for x in jax.tree.leaves(params))),
      "batch_size": _BATCH_SIZE.value,
      "steps_per_chunk": _STEPS.value,
      "ms_per_step": round(ms, 4),
      "ms_per_step_min": round(1e3 * min(times) / _STEPS.value, 4),
      "first_call_s": round(first_call_s, 3),
      **environment.describe(),
  }))


if __name__ == "__main__":
  app.run(main)
