r"""Runs every benchmark and writes `docs/benchmarks.md` from their JSON lines.

  python -m benchmarks.run_all --dataset=idx:../shared/data/mnist-t10k \
      --peer_python=VENV/bin/python --peer_script=../shared/peers/torch_l2o_dm.py

Each benchmark runs in its own process, one after the other on the same
machine (so nothing else of ours shares the cores); their lines go to
`--jsonl` and the tables, with the issue's targets checked, to `--out`. Without
a peer the meta-step table says the PyTorch ratio was not measured. `--quick`
shrinks every setting (the test suite uses it; its figures mean nothing).
About 12 minutes on 2 CPU cores (2026-12-02).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time

from absl import app, flags

from flatl2o import report

_DATASET = flags.DEFINE_string("dataset", None, "Dataset of the timed meta-steps; default "
                               "synthetic MNIST-shaped.")
_PEER_PYTHON = flags.DEFINE_string("peer_python", None, "Python with torch for the peer.")
_PEER_SCRIPT = flags.DEFINE_string("peer_script", None, "Path of torch_l2o_dm.py.")
_OUT = flags.DEFINE_string("out", "docs/benchmarks.md", "Markdown report.")
_JSONL = flags.DEFINE_string("jsonl", "runs/benchmarks/results.jsonl", "Raw benchmark lines.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny settings (smoke test; figures meaningless).")

# The targets, checked in the report.
META_STEP_TO_PEER = 0.5
L2O_DM_TO_ADAM, MLP_LOPT_TO_ADAM = 8.0, 3.0
MEMORY_CUT_AT_200 = 4.0
COMPILE_200_TO_20 = 1.5


def _commands(quick: bool) -> list[list[str]]:
  dataset = [f"--dataset={_DATASET.value}"] if _DATASET.value else []
  peer = ([f"--peer_python={_PEER_PYTHON.value}", f"--peer_script={_PEER_SCRIPT.value}"]
          if _PEER_PYTHON.value and _PEER_SCRIPT.value else [])
  if quick:
    return [
        ["benchmarks.meta_step", "--optimizer=l2o_dm", "--steps=1", "--unroll_length=2",
         "--compile_unrolls=2,4", *dataset],
        ["benchmarks.memory", "--unrolls=4", "--meta_batch_size=2", "--steps=1"],
        ["benchmarks.inner_step", "--optimizer=adam,l2o_dm", "--steps=5", "--repeats=1"],
        ["benchmarks.regularizer_cost", "--steps=1", "--variants=none,hessian_trace_1probe",
         *dataset],
    ]
  return [
      ["benchmarks.meta_step", "--optimizer=all", *dataset, *peer],
      ["benchmarks.memory"],
      ["benchmarks.inner_step", "--optimizer=all", "--model=mlp"],
      # An Adam step of the CNN takes ~1.5 s on 2 CPU cores (XLA's convolutions).
      ["benchmarks.inner_step", "--optimizer=all", "--model=flax_cnn", "--steps=5",
       "--repeats=2"],
      ["benchmarks.regularizer_cost", *dataset],
  ]


def _run(command: list[str]) -> tuple[list[dict], float]:
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True,
                        check=False)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(command)} failed (exit {proc.returncode}): "
                       f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
  lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  return lines, time.perf_counter() - start


def _verdict(ok: bool) -> str:
  return "met" if ok else "**not met**"


def render(lines: list[dict], took: dict[str, float], when: str) -> str:
  """The Markdown report of benchmark lines (those of one `run_all`)."""
  env = next(iter(lines), {})
  out = [
      "# Benchmarks",
      "",
      f"Written by `python -m benchmarks.run_all` on {when}: {env.get('cpu_count')} CPU cores "
      f"({env.get('machine')}, {env.get('platform')}), JAX {env.get('jax')} on "
      f"{env.get('backend')} ({env.get('device')}, {env.get('device_count')} device(s)), "
      f"allocator {env.get('allocator')}, Python {env.get('python')}. Every figure below comes "
      "from that one run; rerun the command to refresh this page. Absolute times move with "
      "the machine's load; ratios are measured side by side in one process.",
      "",
  ]
  by_kind: dict[str, list[dict]] = {}
  for line in lines:
    by_kind.setdefault(line["benchmark"], []).append(line)

  steps = by_kind.get("meta_step", [])
  if steps:
    out += ["## Meta-step (`benchmarks.meta_step`)", "",
            f"mlp_sigmoid 784-20-10 on {steps[0]['dataset']}, batch 128, unroll "
            f"{steps[0]['unroll_length']}, one optimizee, median of the timed meta-steps.", "",
            "| optimizer | ms / meta-step | compile s by unroll | PyTorch peer ms "
            "| ratio to peer |",
            "|---|---|---|---|---|"]
    for s in steps:
      peer = s.get("peer_ms_per_meta_step")
      out.append(f"| {s['optimizer']} | {s['ms_per_meta_step']} | "
                 + ", ".join(f"{k}: {v}" for k, v in s["compile_s"].items())
                 + f" | {peer if peer is not None else 'not run'} | "
                 f"{s.get('ratio_to_peer', '–')} |")
    out.append("")
    for s in steps:
      if "ratio_to_peer" in s:
        out.append(f"- Target: L2O-DM at most {META_STEP_TO_PEER}x the PyTorch eager peer: "
                   f"{s['ratio_to_peer']}x, {_verdict(s['ratio_to_peer'] <= META_STEP_TO_PEER)}.")
      compiles = {int(k): v for k, v in s["compile_s"].items()}
      if 20 in compiles and 200 in compiles:
        ratio = compiles[200] / compiles[20]
        verdict = _verdict(ratio <= COMPILE_200_TO_20)
        out.append(f"- {s['optimizer']}: compile at unroll 200 is {ratio:.2f}x unroll 20 "
                   f"(target at most {COMPILE_200_TO_20}x): {verdict}.")
    if not any("ratio_to_peer" in s for s in steps):
      out.append("- The PyTorch peer was not run (pass --peer_python and --peer_script).")
    out.append("")

  memory = by_kind.get("memory", [])
  if memory:
    out += ["## Memory of a meta-step (`benchmarks.memory`)", "",
            f"{memory[0]['optimizer']} on mlp_sigmoid (15,910 parameters per optimizee), "
            f"meta-batch {memory[0]['meta_batch_size']}: XLA's `memory_analysis()` of the "
            "compiled meta-step, every step's state kept (`remat_block_length=1`) against "
            "blocks; time of both at the timing meta-batch.", "",
            "| unroll | block | temp GiB, default | temp GiB, blocked | cut | "
            "ms default / blocked | time ratio |", "|---|---|---|---|---|---|---|"]
    for m in memory:
      ms = m.get("ms_per_meta_step", {})
      out.append(f"| {m['unroll_length']} | {m['remat_block_length']} | "
                 f"{m['default']['temp_gib']} | {m['blocked']['temp_gib']} | "
                 f"{m['temp_ratio']}x | {ms.get('default', '–')} / {ms.get('blocked', '–')} "
                 f"(meta-batch {m.get('time_meta_batch_size', '–')}) | "
                 f"{m.get('time_ratio', '–')} |")
    for m in memory:
      if m["unroll_length"] == 200:
        out.append(f"\n- Target: the knob cuts the memory at least {MEMORY_CUT_AT_200}x at "
                   f"unroll 200: {m['temp_ratio']}x, "
                   f"{_verdict(m['temp_ratio'] >= MEMORY_CUT_AT_200)}.")
    out.append("")

  inner = by_kind.get("inner_step", [])
  if inner:
    out += ["## Drop-in cost: one training step (`benchmarks.inner_step`)", "",
            "Learned optimizers with fresh meta-parameters; Adam timed first in the same "
            "process.", "",
            "| model (parameters) | optimizer | ms / step | ratio to Adam |", "|---|---|---|---|"]
    for s in inner:
      out.append(f"| {s['model']} ({s['num_params']:,}) | {s['optimizer']} | "
                 f"{s['ms_per_step']} | {s['ratio_to_adam']} |")
    out.append("")
    for s in inner:
      if s["model"] == "mlp" and s["optimizer"] in ("l2o_dm", "mlp_lopt"):
        limit = L2O_DM_TO_ADAM if s["optimizer"] == "l2o_dm" else MLP_LOPT_TO_ADAM
        out.append(f"- Target: a {s['optimizer']} step at most {limit}x an Adam step on the "
                   f"MLP: {s['ratio_to_adam']}x, {_verdict(s['ratio_to_adam'] <= limit)}.")
    out.append("")

  costs = by_kind.get("regularizer_cost", [])
  if costs:
    out += ["## Cost of the flatness terms (`benchmarks.regularizer_cost`)", "",
            "| meta-objective term | ms / meta-step | ratio to plain | compile s |",
            "|---|---|---|---|"]
    for name, v in costs[0]["variants"].items():
      out.append(f"| {name} | {v['ms']} | {v['ratio']} | {v['compile_s']} |")
    out.append("")

  out += ["## Time taken", ""]
  out += [f"- `{name}`: {seconds:.0f} s" for name, seconds in took.items()]
  return "\n".join(out) + "\n"


def main(argv):
  del argv
  lines, took = [], {}
  for command in _commands(_QUICK.value):
    name = " ".join(command)
    print(f"running python -m {name}", file=sys.stderr, flush=True)
    got, took[name] = _run(command)
    lines += got
  os.makedirs(os.path.dirname(os.path.abspath(_JSONL.value)), exist_ok=True)
  report.write_jsonl(_JSONL.value, lines)
  when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  report.write_text(_OUT.value, render(lines, took, when))
  print(f"wrote {_OUT.value} and {_JSONL.value}")


if __name__ == "__main__":
  app.run(main)
