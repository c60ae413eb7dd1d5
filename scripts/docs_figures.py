r"""Regenerates the figures docs/ shows from a study's folder, so they cannot go stale.

  python scripts/docs_figures.py runs/reproduce-primary --prefix=primary
  python scripts/docs_figures.py runs/reproduce-sweep --prefix=sweep --only=coefficient_sweep

Reads RUN_DIR/results.json (what `experiments.reproduce` wrote), draws every
figure of `flatl2o.study.figures` from it, and writes each as
docs/figures/PREFIX-NAME.png (atomically; `--only` keeps the named ones).
Nothing is recomputed: the figures are the run's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("run_dir", help="a finished experiments.reproduce folder")
  parser.add_argument("--prefix", required=True, help="file prefix in docs/figures")
  parser.add_argument("--only", default="", help="comma-separated figure names to keep")
  parser.add_argument("--out_dir", default=os.path.join(ROOT, "docs", "figures"))
  args = parser.parse_args(argv)
  path = os.path.join(args.run_dir, "results.json")
  try:
    with open(path) as f:
      results = json.load(f)
  except (OSError, ValueError) as e:
    print(f"cannot read {path}: {getattr(e, 'strerror', None) or e}; give a finished "
          "experiments.reproduce folder", file=sys.stderr)
    return 2
  sys.path.insert(0, ROOT)
  from flatl2o.study import figures  # pylint: disable=g-import-not-at-top
  keep = {n.strip() for n in args.only.split(",") if n.strip()}
  with tempfile.TemporaryDirectory() as scratch:
    written = figures(results, results.get("table", {}), scratch)
    for name in sorted(os.listdir(scratch)):
      stem = os.path.splitext(name)[0]
      if not name.endswith(".png") or (keep and stem not in keep):
        continue
      target = os.path.join(args.out_dir, f"{args.prefix}-{name}")
      shutil.copyfile(os.path.join(scratch, name), target + ".tmp")
      os.replace(target + ".tmp", target)
      print(f"wrote {os.path.relpath(target, ROOT)}")
    del written
  return 0


if __name__ == "__main__":
  sys.exit(main())
