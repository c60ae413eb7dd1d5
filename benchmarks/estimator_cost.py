r"""Cost of the meta-gradient estimators: meta-step time as a ratio to truncated backprop.

  python -m benchmarks.estimator_cost [--dataset=idx:../shared/data/mnist-t10k]
      [--es_pairs=8] [--meta_batch_size=4]

L2O-DM on mlp_sigmoid with 784 inputs, batch 128, unroll 20, --meta_batch_size
optimizees, in one process: truncated backprop (one unroll and its backward),
PES (2N unrolls, no backward) and ES (2N + 1 unrolls from one state, no backward)
with N = --es_pairs. Each: AOT compile time, then the median of --steps
meta-steps. Prints one JSON line; `ratio` is to the truncated meta-step.
"""

import json

from absl import app, flags

from benchmarks import _common
from flatl2o import environment, meta, optimizers

_DATASET = flags.DEFINE_string("dataset", None, "Dataset; default synthetic MNIST-shaped.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed meta-steps per estimator.")
_PAIRS = flags.DEFINE_integer("es_pairs", 8, "Antithetic pairs of PES and ES.")
_META_BATCH = flags.DEFINE_integer("meta_batch_size", 4, "Optimizees per meta-step.")
_UNROLL = flags.DEFINE_integer("unroll_length", 20, "Inner steps per truncation.")


def main(argv):
  del argv
  task = _common.mnist_shaped_task(_DATASET.value)
  lopt = optimizers.L2ODM()
  configs = {name: meta.MetaTrainConfig(
      unroll_length=_UNROLL.value, num_inner_steps=10 * _UNROLL.value,
      meta_batch_size=_META_BATCH.value, num_devices=1, estimator=name,
      es_pairs=_PAIRS.value) for name in meta.ESTIMATORS}
  out = _common.time_variants(lopt, task, configs, _STEPS.value, baseline="truncated")
  print(json.dumps({"benchmark": "estimator_cost", "optimizer": "l2o_dm",
                    "task": "mlp_sigmoid", "dataset": task.data.name,
                    "unroll_length": _UNROLL.value, "meta_batch_size": _META_BATCH.value,
                    "es_pairs": _PAIRS.value, "estimators": out, **environment.describe()}))


if __name__ == "__main__":
  app.run(main)
