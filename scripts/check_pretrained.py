r"""Reruns each shipped optimizer's meta-training command and compares the export's checksum.

  python scripts/check_pretrained.py                 # every shipped optimizer
  python scripts/check_pretrained.py l2o_dm rnnprop  # some of them

For each name, the card's `training.command` (an `experiments.meta_train` or
`experiments.reproduce` line) is run in a fresh temporary folder (its --run_dir
replaced), and the SHA-256 of the new export's meta_params.npz is compared with
the card's `export_sha256`. Prints one JSON line per optimizer (name, command,
seconds, the two checksums, "same") and exits 1 if any differs. Meta-training
is deterministic on a CPU with the same versions, so "same" is the expected
answer there; another machine or JAX version may round differently.
"""

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

from flatl2o import pretrained


def check(name: str) -> dict:
  card = pretrained.card(name)
  command = card["training"]["command"]
  with tempfile.TemporaryDirectory() as tmp:
    run_dir = os.path.join(tmp, "run")
    args = shlex.split(command)
    args = [a for a in args if not a.startswith("--run_dir=")] + [f"--run_dir={run_dir}"]
    if args[0] == "python":
      args[0] = sys.executable
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
      return {"name": name, "command": command, "returncode": proc.returncode,
              "stderr": proc.stderr[-500:], "same": False}
    with open(os.path.join(run_dir, "optimizer", "optimizer.json")) as f:
      rebuilt = json.load(f)["sha256"]
  return {"name": name, "command": command, "seconds": round(seconds, 1),
          "shipped_sha256": card["export_sha256"], "rebuilt_sha256": rebuilt,
          "same": rebuilt == card["export_sha256"]}


def main(argv):
  names = argv[1:] or list(pretrained.names())
  results = [check(n) for n in names]
  for r in results:
    print(json.dumps(r))
  return 0 if all(r["same"] for r in results) else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv))
