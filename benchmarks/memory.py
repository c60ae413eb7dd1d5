r"""Compiled memory of a meta-step, with and without `remat_block_length`, and its time cost.

  python -m benchmarks.memory [--unrolls=20,200] [--meta_batch_size=64] [--optimizer=l2o_dm]

For each unroll, the L2O-DM meta-step on mlp_sigmoid with MNIST-shaped input
(15,910 parameters per optimizee) is compiled at `--meta_batch_size` with every
step's state kept (`remat_block_length=1`) and with blocks of
`suggest_remat_block_length(unroll)` steps, and XLA's `memory_analysis()` of
each compiled program is printed (it needs no device memory, so the CPU gives
the figures a GPU would have to hold). Then both settings are timed side by
side at `--time_meta_batch_size` (median of `--steps` meta-steps after a
warm-up) for the time the recomputation costs. One JSON line per unroll.
"""

import json
import statistics

from absl import app, flags

from benchmarks import _common
from flatl2o import environment, meta, optimizers
from flatl2o.meta import config as config_lib

_OPTIMIZER = flags.DEFINE_string("optimizer", "l2o_dm", "Learned architecture.")
_UNROLLS = flags.DEFINE_list("unrolls", ["20", "200"], "Unroll lengths.")
_META_BATCH = flags.DEFINE_integer("meta_batch_size", 64, "Meta-batch of the memory figures.",
                                   lower_bound=1)
_TIME_META_BATCH = flags.DEFINE_integer("time_meta_batch_size", 1,
                                        "Meta-batch of the timing (0: no timing).",
                                        lower_bound=0)
_STEPS = flags.DEFINE_integer("steps", 5, "Timed meta-steps per setting.", lower_bound=1)


def _config(lopt, unroll, meta_batch, block):
  return meta.MetaTrainConfig(unroll_length=unroll, num_inner_steps=unroll,
                              meta_batch_size=meta_batch, remat_block_length=block,
                              num_devices=1, meta_loss=lopt.preferred_meta_loss)


def _memory(lopt, task, config) -> dict:
  compiled, compile_s, _ = _common.compile_meta_step(lopt, task, config, abstract_states=True)
  analysis = compiled.memory_analysis()
  gib = lambda b: round(b / 2**30, 3)
  return {"temp_gib": gib(analysis.temp_size_in_bytes),
          "argument_gib": gib(analysis.argument_size_in_bytes),
          "output_gib": gib(analysis.output_size_in_bytes),
          "alias_gib": gib(analysis.alias_size_in_bytes),
          "compile_s": round(compile_s, 2)}


def main(argv):
  del argv
  if _OPTIMIZER.value not in optimizers.learned_names():
    raise app.UsageError(f"unknown --optimizer {_OPTIMIZER.value!r}; accepted: "
                         f"{', '.join(optimizers.learned_names())}")
  lopt = optimizers.learned(_OPTIMIZER.value)
  task = _common.mnist_shaped_task(None)
  env = environment.describe()
  for unroll in (int(u) for u in _UNROLLS.value):
    block = config_lib.suggest_remat_block_length(unroll)
    default = _memory(lopt, task, _config(lopt, unroll, _META_BATCH.value, 1))
    blocked = _memory(lopt, task, _config(lopt, unroll, _META_BATCH.value, block))
    line = {"benchmark": "memory", "optimizer": _OPTIMIZER.value, "task": "mlp_sigmoid",
            "num_params": 15910, "unroll_length": unroll, "meta_batch_size": _META_BATCH.value,
            "remat_block_length": block, "default": default, "blocked": blocked,
            "temp_ratio": round(default["temp_gib"] / max(blocked["temp_gib"], 1e-9), 2)}
    if _TIME_META_BATCH.value:
      ms = {}
      for name, k in (("default", 1), ("blocked", block)):
        _, times = _common.time_meta_step(
            lopt, task, _config(lopt, unroll, _TIME_META_BATCH.value, k), steps=_STEPS.value)
        ms[name] = 1e3 * statistics.median(times)
      line.update({"time_meta_batch_size": _TIME_META_BATCH.value,
                   "ms_per_meta_step": {k: round(v, 1) for k, v in ms.items()},
                   "time_ratio": round(ms["blocked"] / ms["default"], 3)})
    print(json.dumps({**line, **env}), flush=True)


if __name__ == "__main__":
  app.run(main)
