r"""Ships a coefficient sweep: copies a --preset=sweep run's results into flatl2o/study/sweep.json.

  python -m experiments.reproduce --preset=sweep            # runs/reproduce-sweep
  python scripts/ship_sweep.py runs/reproduce-sweep/results.json

The default study (--preset=primary) takes its coefficients from that file;
it keeps the command, date, machine and wall time that made the sweep, its
points (validation accuracy, collapse, gradient ratio per coefficient) and
each term's summary. A results.json that is not a sweep's is refused (exit 2).
"""

import os
import sys

from flatl2o import report
from flatl2o.study import sweep

KEEP = ("command", "date", "machine", "wall_time_s", "coefficients", "sweep", "sweep_terms")


def main(argv):
  if len(argv) != 2:
    print(f"usage: python {argv[0]} RUN_DIR/results.json", file=sys.stderr)
    return 2
  try:
    data = sweep.load(argv[1])
  except ValueError as e:
    print(f"ship_sweep.py: {e}", file=sys.stderr)
    return 2
  if not data.get("config", {}).get("settings", {}).get("sweep_only"):
    print(f"ship_sweep.py: {argv[1]} is not a --preset=sweep run's results.json", file=sys.stderr)
    return 2
  shipped = {k: data[k] for k in KEEP if k in data}
  shipped["settings"] = data["config"]["settings"]
  report.write_json(sweep.SWEEP_FILE, shipped)
  print(f"wrote {os.path.relpath(sweep.SWEEP_FILE)}: " + ", ".join(
      f"{k} {v:g}" for k, v in shipped["coefficients"].items()))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
