#!/usr/bin/env bash
# The GPU checks of issues 8, 10 and 11, as one command for a lent CUDA machine (see WORKSPACE.md).
# About 9 minutes on one GPU (the suite is capped at 7).
#
# Here, first (downloads the wheels the device image lacks into the ignored .whl/):
#   bash ../shared/gpu/fetch-wheels.sh .whl
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl ml-collections
# Then on the device, with `.whl` carried:
#   bash scripts/gpu_check.sh            # writes $OUT/gpu_suite.log and $OUT/gpu_bench.jsonl
# Not yet run on a GPU: no device was lent to the tasks that wrote it.
set -uo pipefail
out=${OUT:-/tmp/flatl2o-gpu}
mkdir -p "$out" "$HOME/site"
python3 -m pip install -q --no-index --no-deps --target "$HOME/site" .whl/*.whl
export PYTHONPATH="$HOME/site:$PWD"
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # pytest -n shares the GPU between workers
python3 -c "import jax; print(jax.devices())" | tee "$out/devices.txt"
# The suite on the GPU (flatness measures run at precision='highest', so the hvp test should pass).
timeout 300 python3 -m pytest -q -n 4 -x tests > "$out/gpu_suite.log" 2>&1; echo "suite rc=$?" >> "$out/gpu_suite.log"
# Meta-step per architecture, and determinism with --deterministic (same command twice).
timeout 120 python3 -m benchmarks.meta_step --optimizer=all --compile_unrolls=20,200 > "$out/gpu_bench.jsonl" 2>> "$out/gpu_bench.err"
# Issue 10: throughput at meta-batch 256 (L2O-DM, MLPLOpt), meta-batch 1024 with the memory knob,
# compiled memory at 1024, drop-in step cost.
for opt in l2o_dm mlp_lopt; do
  timeout 90 python3 -m benchmarks.meta_step --optimizer=$opt --meta_batch_size=256 --steps=5 \
      --compile_unrolls=20 >> "$out/gpu_bench.jsonl" 2>> "$out/gpu_bench.err"
done
timeout 120 python3 -m benchmarks.meta_step --optimizer=l2o_dm --meta_batch_size=1024 \
    --remat_block_length=4 --steps=3 --compile_unrolls=20 >> "$out/gpu_bench.jsonl" 2>> "$out/gpu_bench.err"
timeout 60 python3 -m benchmarks.memory --unrolls=20,200 --meta_batch_size=1024 \
    --time_meta_batch_size=0 >> "$out/gpu_bench.jsonl" 2>> "$out/gpu_bench.err"
timeout 90 python3 -m benchmarks.inner_step --optimizer=all --model=mlp,flax_cnn --steps=100 \
    --repeats=3 >> "$out/gpu_bench.jsonl" 2>> "$out/gpu_bench.err"
for run in a b; do
  timeout 120 python3 -m experiments.meta_train --deterministic --num_meta_iterations=60 \
      --validation_every=60 --run_dir="$out/det-$run" > /dev/null 2>> "$out/det.err"
done
python3 - "$out" <<'PY' >> "$out/gpu_bench.jsonl"
import json, sys, numpy as np
a, b = (np.load(f"{sys.argv[1]}/det-{r}/optimizer/meta_params.npz") for r in "ab")
print(json.dumps({"benchmark": "determinism", "deterministic_flag": True,
                  "max_abs_difference": max(float(np.abs(a[k] - b[k]).max()) for k in a.files)}))
PY
tail -3 "$out/gpu_suite.log"
