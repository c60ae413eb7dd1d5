r"""A chaos run: a study killed with SIGKILL at random moments ends as an uninterrupted one.

  python scripts/chaos.py --work_dir=/tmp/chaos --kills=3 --seed=0
  python scripts/chaos.py --work_dir=/tmp/chaos --kills=3 \
      --study_flags="--models=l2o_dm --regularizers=none,hessian --optimizees=mlp_sigmoid"

1. Runs `python -m experiments.reproduce --preset=PRESET --run_dir=WORK_DIR/reference`
   to the end (or reuses a finished one) and times it.
2. Starts the same command on `WORK_DIR/chaos`, SIGKILLs its process group after
   a random delay (seeded: `--seed`), restarts it, `--kills` times; a delay is
   drawn uniformly from [--min_delay_s, 1.5 x reference time / (kills + 1)],
   so the kills spread over the whole run.
3. Lets the last start finish and compares the two `results.json` with every
   timing field (wall time, speeds) left out and the folder names replaced.

Prints one line per kill and a last line "identical" or the first difference;
exits 0 when identical, 1 when not (or when a start fails). `--report=PATH`
writes the same as JSON. Each start of the study has to pass
`experiments.reproduce`'s own checks, so a stale lock or a damaged cell would
show up here as a failed start.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Keys whose values depend on the machine's speed, not on what was computed.
TIMING = re.compile(r"wall|per_second|elapsed|seconds|(^|_)time(_s)?$|(^|_)eta(_s)?$")


def without_timing(value, folder: str):
  """`value` with timing keys dropped and `folder` replaced by RUN_DIR in strings."""
  if isinstance(value, dict):
    return {k: without_timing(v, folder) for k, v in value.items() if not TIMING.search(k)}
  if isinstance(value, list):
    return [without_timing(v, folder) for v in value]
  if isinstance(value, str):
    return value.replace(folder, "RUN_DIR")
  return value


def first_difference(a, b, where: str = "") -> str | None:
  """Where two JSON values first differ ('key: X != Y'), or None when they are equal."""
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      found = first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else k)
      if found:
        return found
    return None
  if isinstance(a, list) and isinstance(b, list):
    if len(a) != len(b):
      return f"{where}: {len(a)} items != {len(b)} items"
    for i, (x, y) in enumerate(zip(a, b)):
      found = first_difference(x, y, f"{where}[{i}]")
      if found:
        return found
    return None
  if a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b):
    return None  # NaN == NaN here: the same computation gives the same NaN
  return f"{where}: {a!r} != {b!r}"


def command(preset: str, run_dir: str, study_flags: str) -> list[str]:
  return [sys.executable, "-m", "experiments.reproduce", f"--preset={preset}",
          f"--run_dir={run_dir}", *shlex.split(study_flags)]


def start(cmd: list[str], log_path: str) -> subprocess.Popen:
  log = open(log_path, "a")  # pylint: disable=consider-using-with  (closed with the process)
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)  # its own process group: killed whole
  proc.log = log
  return proc


def finish(proc: subprocess.Popen, timeout_s: float) -> int:
  try:
    code = proc.wait(timeout=timeout_s)
  finally:
    proc.log.close()
  return code


def cells_done(run_dir: str) -> int:
  root = os.path.join(run_dir, "cells")
  return sum(f.endswith(".json") for _, _, files in os.walk(root) for f in files)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--work_dir", required=True, help="Holds reference/, chaos/ and logs.")
  parser.add_argument("--preset", default="smoke", help="experiments.reproduce --preset.")
  parser.add_argument("--study_flags", default="",
                      help="More experiments.reproduce flags, as one string.")
  parser.add_argument("--kills", type=int, default=3, help="SIGKILLs before the last start.")
  parser.add_argument("--seed", type=int, default=0, help="Seeds the kill moments.")
  parser.add_argument("--min_delay_s", type=float, default=5.0,
                      help="Shortest time from a start to its kill.")
  parser.add_argument("--timeout_s", type=float, default=7200.0, help="Per start.")
  parser.add_argument("--report", default=None, help="Also write the outcome as JSON here.")
  args = parser.parse_args(argv)
  if args.kills < 0 or args.min_delay_s <= 0:
    parser.error("--kills must be >= 0 and --min_delay_s > 0")

  work = os.path.abspath(args.work_dir)
  os.makedirs(work, exist_ok=True)
  reference, chaos = os.path.join(work, "reference"), os.path.join(work, "chaos")
  outcome = {"preset": args.preset, "study_flags": args.study_flags, "seed": args.seed,
             "kills": []}

  timing_file = os.path.join(work, "reference_time.json")
  if os.path.exists(os.path.join(reference, "results.json")) and os.path.exists(timing_file):
    with open(timing_file) as f:
      reference_s = json.load(f)["wall_s"]
    print(f"reference: reused {reference} ({reference_s:.0f} s)", flush=True)
  else:
    tic = time.monotonic()
    proc = start(command(args.preset, reference, args.study_flags),
                 os.path.join(work, "reference.log"))
    if finish(proc, args.timeout_s) != 0:
      print(f"reference run failed (exit {proc.returncode}); see {work}/reference.log")
      return 1
    reference_s = time.monotonic() - tic
    with open(timing_file, "w") as f:
      json.dump({"wall_s": reference_s}, f)
    print(f"reference: {reference_s:.0f} s", flush=True)
  outcome["reference_s"] = reference_s

  rng = random.Random(args.seed)
  high = max(args.min_delay_s, 1.5 * reference_s / (args.kills + 1))
  tic = time.monotonic()
  log_path = os.path.join(work, "chaos.log")
  for i in range(1, args.kills + 1):
    delay = rng.uniform(args.min_delay_s, high)
    proc = start(command(args.preset, chaos, args.study_flags), log_path)
    try:
      code = proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      code = proc.wait()
    proc.log.close()
    if code != -signal.SIGKILL:
      print(f"start {i} ended by itself (exit {code}) before its kill at {delay:.1f} s",
            flush=True)
      outcome["ended_early"] = {"start": i, "exit": code}
      if code != 0:
        print(f"a start failed; see {log_path}")
        return 1
      break
    outcome["kills"].append({"after_s": round(delay, 1), "cells_done": cells_done(chaos)})
    print(f"kill {i}/{args.kills}: SIGKILL after {delay:.1f} s ({cells_done(chaos)} cells done)",
          flush=True)
  if "ended_early" not in outcome:
    proc = start(command(args.preset, chaos, args.study_flags), log_path)
    if finish(proc, args.timeout_s) != 0:
      print(f"the last start failed (exit {proc.returncode}); see {log_path}")
      return 1
  outcome["chaos_s"] = time.monotonic() - tic

  with open(os.path.join(reference, "results.json")) as f:
    expected = without_timing(json.load(f), reference)
  with open(os.path.join(chaos, "results.json")) as f:
    got = without_timing(json.load(f), chaos)
  difference = first_difference(expected, got)
  outcome["identical"] = difference is None
  outcome["difference"] = difference
  print(f"{len(outcome['kills'])} kills, {outcome['chaos_s']:.0f} s in all "
        f"(reference {reference_s:.0f} s): "
        + ("results.json identical (timing fields left out)" if difference is None
           else f"results.json differs: {difference}"), flush=True)
  if args.report:
    with open(args.report, "w") as f:
      json.dump(outcome, f, indent=2)
  return 0 if difference is None else 1


if __name__ == "__main__":
  sys.exit(main())
