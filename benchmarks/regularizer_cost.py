r"""Cost of the flatness terms: meta-step time as a ratio to the plain meta-step, one process.

  python -m benchmarks.regularizer_cost [--dataset=idx:../shared/data/mnist-t10k]

Same work as benchmarks/meta_step.py (L2O-DM, mlp_sigmoid with 784 inputs,
batch 128, unroll 20, one optimizee). Variants: none; Hessian trace with 1 and
4 probes; top eigenvalue by power iteration and by Lanczos (10 hvps); local
entropy with K=4 chains of L=5 steps, and K=16 (to show that compile time does
not grow with K: chains are vmapped). Each variant: AOT compile time, then the
median of --steps meta-steps. Prints one JSON line.
"""

import json

from absl import app, flags

from benchmarks import _common
from flatl2o import environment
from flatl2o import meta, optimizers

_DATASET = flags.DEFINE_string("dataset", None, "Dataset; default synthetic MNIST-shaped.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed meta-steps per variant.")
_VARIANTS = flags.DEFINE_list("variants", None, "Variants to time (default all); 'none' is "
                              "always timed, as the baseline of the ratios.")

VARIANTS = {
    "none": meta.RegularizerConfig(),
    "hessian_trace_1probe": meta.RegularizerConfig(kind="hessian", hessian_probes=1),
    "hessian_trace_4probes": meta.RegularizerConfig(kind="hessian", hessian_probes=4),
    "hessian_eigenvalue_10iters": meta.RegularizerConfig(kind="hessian",
                                                         hessian_estimator="eigenvalue"),
    "hessian_lanczos_10iters": meta.RegularizerConfig(kind="hessian", hessian_estimator="lanczos"),
    "entropy_K4_L5": meta.RegularizerConfig(kind="entropy", entropy_chains=4, entropy_steps=5),
    "entropy_K16_L5": meta.RegularizerConfig(kind="entropy", entropy_chains=16, entropy_steps=5),
}


def main(argv):
  del argv
  task = _common.mnist_shaped_task(_DATASET.value)
  lopt = optimizers.L2ODM()
  chosen = ["none", *[v for v in (_VARIANTS.value or VARIANTS) if v != "none"]]
  for name in chosen:
    if name not in VARIANTS:
      raise app.UsageError(f"unknown variant {name!r}; accepted: {', '.join(VARIANTS)}")
  configs = {name: meta.MetaTrainConfig(unroll_length=20, num_inner_steps=20,
                                        meta_batch_size=1, regularizer=VARIANTS[name])
             for name in chosen}
  out = _common.time_variants(lopt, task, configs, _STEPS.value, baseline="none")
  print(json.dumps({"benchmark": "regularizer_cost", "optimizer": "l2o_dm",
                    "task": "mlp_sigmoid", "dataset": task.data.name, "unroll_length": 20,
                    "meta_batch_size": 1, "variants": out, **environment.describe()}))


if __name__ == "__main__":
  app.run(main)
