r"""A chaos run: a study killed with SIGKILL at random moments ends as an uninterrupted one.

  python scripts/chaos.py --work_dir=/tmp/chaos --kills=3 --seed=0
  python scripts/chaos.py --work_dir=/tmp/chaos --kills=3 \
      --study_flags="--models=l2o_dm --regularizers=none,hessian --optimizees=mlp_sigmoid"

1. Runs `python -m experiments.reproduce --preset=PRESET --run_dir=WORK_DIR/reference`
   to the end (or reuses a finished one) and times it.
2. Starts the same command on `WORK_DIR/chaos`, SIGKILLs its process group at a
   random moment (seeded: `--seed`), restarts it, `--kills` times. The moments
   are spread over the study by its progress, not by the clock (on a shared
   machine a run's speed varies several-fold with the load): `--kills`
   positions are drawn uniformly among the first 75% of the reference run's
   progress lines (one per cell computed: "meta-training NAME", "tuned NAME",
   "meta-tested NAME on OPTIMIZEE"), and start i is killed a uniform 0 to
   `--jitter_s` seconds after the distinct progress lines of all starts so far
   reach position i. Distinct: a cell redone after a kill prints its line again
   and counts once, a finished cell prints nothing, so the count is the study's
   own progress and every kill lands before it ends.
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

# The study's progress lines: one per cell as it is computed (meta-training and
# tuning when a cell starts, so a cell redone after a kill prints it again).
PROGRESS = re.compile(r"meta-training (\S+) \(up to|: tuned (\S+):|: meta-tested (\S+ on \S+);")


def progress_key(line: str) -> str | None:
  """The cell a progress line is about ("meta-training NAME", ...), or None for other lines."""
  match = PROGRESS.search(line)
  if match is None:
    return None
  kinds = ("meta-training", "tuned", "meta-tested")
  return next(f"{k} {g}" for k, g in zip(kinds, match.groups()) if g is not None)

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


def start(cmd: list[str]) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)  # its own process group: killed whole


def follow(proc: subprocess.Popen, log_path: str, kill_at_line: float | None = None,
           jitter_s: float = 0.0, seen: set[str] | None = None) -> int:
  """Copies `proc`'s output to `log_path`, adding its progress keys to `seen`; kills its
  process group `jitter_s` after `seen` holds `kill_at_line` keys. Returns the exit code."""
  seen = set() if seen is None else seen
  killed = False
  with open(log_path, "a") as log:
    for line in proc.stdout:  # after a kill: what the process wrote before it, then EOF
      log.write(line)
      key = progress_key(line)
      if key is None:
        continue
      seen.add(key)
      if not killed and kill_at_line is not None and len(seen) >= kill_at_line:
        log.flush()
        time.sleep(jitter_s)
        try:
          os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
          pass  # it ended first
        killed = True
    proc.stdout.close()
  return proc.wait()


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
  parser.add_argument("--jitter_s", type=float, default=1.0,
                      help="A kill comes up to this long after its progress line.")
  parser.add_argument("--report", default=None, help="Also write the outcome as JSON here.")
  args = parser.parse_args(argv)
  if args.kills < 0 or args.jitter_s < 0:
    parser.error("--kills and --jitter_s must be >= 0")

  work = os.path.abspath(args.work_dir)
  os.makedirs(work, exist_ok=True)
  reference, chaos = os.path.join(work, "reference"), os.path.join(work, "chaos")
  outcome = {"preset": args.preset, "study_flags": args.study_flags, "seed": args.seed,
             "kills": []}

  timing_file = os.path.join(work, "reference_time.json")
  reference_log = os.path.join(work, "reference.log")
  if os.path.exists(os.path.join(reference, "results.json")) and os.path.exists(timing_file):
    with open(timing_file) as f:
      reference_s = json.load(f)["wall_s"]
    with open(reference_log) as f:
      reference_lines = len({progress_key(line) for line in f} - {None})
    print(f"reference: reused {reference} ({reference_s:.0f} s)", flush=True)
  else:
    tic = time.monotonic()
    reference_keys: set[str] = set()
    code = follow(start(command(args.preset, reference, args.study_flags)), reference_log,
                  seen=reference_keys)
    reference_lines = len(reference_keys)
    if code != 0:
      print(f"reference run failed (exit {code}); see {reference_log}")
      return 1
    reference_s = time.monotonic() - tic
    with open(timing_file, "w") as f:
      json.dump({"wall_s": reference_s}, f)
    print(f"reference: {reference_s:.0f} s, {reference_lines} progress lines", flush=True)
  outcome["reference_s"] = reference_s

  rng = random.Random(args.seed)
  positions = sorted(rng.uniform(1, max(1, 0.75 * reference_lines)) for _ in range(args.kills))
  tic = time.monotonic()
  log_path = os.path.join(work, "chaos.log")
  seen: set[str] = set()
  for i, position in enumerate(positions, start=1):
    jitter = rng.uniform(0, args.jitter_s)
    started = time.monotonic()
    code = follow(start(command(args.preset, chaos, args.study_flags)), log_path,
                  position, jitter, seen)
    if code != -signal.SIGKILL:
      print(f"start {i} ended by itself (exit {code}) before its kill", flush=True)
      outcome["ended_early"] = {"start": i, "exit": code}
      if code != 0:
        print(f"a start failed; see {log_path}")
        return 1
      break
    after = time.monotonic() - started
    outcome["kills"].append({"after_s": round(after, 1), "progress_line": len(seen),
                             "cells_done": cells_done(chaos)})
    print(f"kill {i}/{args.kills}: SIGKILL {after:.1f} s into start {i}, at progress line "
          f"{len(seen)} of the chaos run ({cells_done(chaos)} cells done)", flush=True)
  if "ended_early" not in outcome:
    code = follow(start(command(args.preset, chaos, args.study_flags)), log_path, seen=seen)
    if code != 0:
      print(f"the last start failed (exit {code}); see {log_path}")
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
