r"""Milliseconds per meta-step, compile time against unroll length, and the PyTorch peer.

  python -m benchmarks.meta_step --optimizer=all     # one line per learned architecture

  python -m benchmarks.meta_step --dataset=idx:../shared/data/mnist-t10k \
      --peer_python=/path/to/venv-with-torch/bin/python \
      --peer_script=../shared/peers/torch_l2o_dm.py

The work matches the peer: mlp_sigmoid 784-20-10 (15,910 parameters), batch
128, unroll 20, one optimizee per meta-step, inner gradients not
differentiated, Adam on the meta-parameters. The JAX meta-step is timed as the
median of `--steps` calls after compilation; `compile_s` is the AOT compile
time of the meta-step at each unroll of `--compile_unrolls`. When a peer is
given it runs in this same process's session, right after, on the same cores,
and `ratio_to_peer` = JAX ms / peer ms (below 1 is faster than the peer).
Prints one JSON line.
"""

import json
import re
import statistics
import subprocess

from absl import app, flags

from benchmarks import _common
from flatl2o import environment
from flatl2o import meta, optimizers

_OPTIMIZER = flags.DEFINE_list(
    "optimizer", ["l2o_dm"], "Learned architectures to time (comma-separated), or 'all'; the "
    "peer is L2O-DM, so ratio_to_peer is reported for l2o_dm only.")
_DATASET = flags.DEFINE_string("dataset", None, "Dataset; default synthetic MNIST-shaped.")
_UNROLL = flags.DEFINE_integer("unroll_length", 20, "Unroll of the timed meta-step.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed meta-steps.")
_COMPILE_UNROLLS = flags.DEFINE_list("compile_unrolls", ["20", "200"],
                                     "Unroll lengths whose compile time is measured.")
_PEER_PYTHON = flags.DEFINE_string("peer_python", None, "Python with torch for the peer.")
_PEER_SCRIPT = flags.DEFINE_string("peer_script", None, "Path of torch_l2o_dm.py.")
_PEER_STEPS = flags.DEFINE_integer("peer_steps", 10, "Timed peer meta-steps.")
_META_BATCH = flags.DEFINE_integer("meta_batch_size", 1, "Optimizees per meta-step (the peer "
                                   "trains one; its ratio is reported at 1 only).", lower_bound=1)
_REMAT_BLOCK = flags.DEFINE_integer("remat_block_length", 1, "MetaTrainConfig.remat_block_length "
                                    "of the timed meta-step.", lower_bound=1)


def _architectures() -> list[str]:
  names = list(optimizers.learned_names()) if _OPTIMIZER.value == ["all"] else _OPTIMIZER.value
  unknown = [n for n in names if n not in optimizers.learned_names()]
  if unknown:
    raise app.UsageError(f"unknown --optimizer {unknown[0]!r}; accepted: all, "
                         f"{', '.join(optimizers.learned_names())}")
  return names


def main(argv):
  del argv
  names = _architectures()
  task = _common.mnist_shaped_task(_DATASET.value)
  for name in names:
    print(json.dumps(_measure(name, task)), flush=True)


def _measure(name: str, task) -> dict:
  lopt = optimizers.learned(name)
  compile_s = {}
  for unroll in sorted({int(u) for u in _COMPILE_UNROLLS.value} | {_UNROLL.value}):
    config = meta.MetaTrainConfig(
        unroll_length=unroll, num_inner_steps=unroll, meta_batch_size=_META_BATCH.value,
        remat_block_length=_REMAT_BLOCK.value if unroll % _REMAT_BLOCK.value == 0 else 1,
        num_devices=1, meta_loss=lopt.preferred_meta_loss)
    timed = unroll == _UNROLL.value
    compile_s[unroll], step_times = _common.time_meta_step(
        lopt, task, config, steps=_STEPS.value if timed else 0, warmup=2 if timed else 0)
    if timed:
      times = step_times
  ms = 1e3 * statistics.median(times)

  line = {
      "benchmark": "meta_step",
      "optimizer": name,
      "task": "mlp_sigmoid",
      "dataset": task.data.name,
      "num_params": 15910,
      "batch_size": 128,
      "unroll_length": _UNROLL.value,
      "meta_batch_size": _META_BATCH.value,
      "remat_block_length": _REMAT_BLOCK.value,
      "ms_per_meta_step": round(ms, 2),
      "optimizee_steps_per_second": round(_META_BATCH.value * _UNROLL.value / (ms / 1e3)),
      "ms_per_meta_step_min": round(1e3 * min(times), 2),
      "compile_s": {str(k): round(v, 2) for k, v in compile_s.items()},
      **environment.describe(),
  }
  if (_PEER_PYTHON.value and _PEER_SCRIPT.value and name == "l2o_dm"
      and _META_BATCH.value == 1):
    args = [_PEER_PYTHON.value, _PEER_SCRIPT.value, "--unroll", str(_UNROLL.value),
            "--steps", str(_PEER_STEPS.value)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    peer_ms = float(re.search(r"median ([\d.]+) ms", out).group(1))
    line.update({"peer": "torch_l2o_dm.py (PyTorch eager)", "peer_ms_per_meta_step": peer_ms,
                 "ratio_to_peer": round(ms / peer_ms, 3)})
  return line


if __name__ == "__main__":
  app.run(main)
