r"""How far the study's ETA was from the truth, read off a real run's log.

  python -m experiments.reproduce 2> run.log; date +%s > run.end
  python scripts/eta_trace.py run.log --end="$(cat run.end)" [--every=10]

Every log line of the study (absl's "I1207 19:52:52.022346 ...") that carries
"ETA for the whole run N s" is compared with the time really left until the
run ended (`--end`, seconds since the epoch, the date the log's lines lack
taken from it). Prints one row per `--every` percent of the run (the shown ETA,
the truth, the error) and the largest error from 10% of the run on; `--json`
prints one JSON line with the same figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys

LINE = re.compile(r"^[IWE](\d{2})(\d{2}) (\d{2}):(\d{2}):(\d{2}\.\d+) .*?"
                  r"(?:ETA for the whole run (\d+) s|(ETA for the whole run: measuring))")
START = re.compile(r"^[IWE](\d{2})(\d{2}) (\d{2}):(\d{2}):(\d{2}\.\d+) ")


def _time(match, year: int) -> float:
  month, day, hour, minute, second = match.groups()[:5]
  return datetime.datetime(year, int(month), int(day), int(hour), int(minute),
                           tzinfo=datetime.timezone.utc).timestamp() + float(second)


def trace(lines, end: float):
  """[(seconds since the first log line, shown ETA or None, true seconds left)]."""
  year = datetime.datetime.fromtimestamp(end, datetime.timezone.utc).year
  start, rows = None, []
  for line in lines:
    first = START.match(line)
    if first and start is None:
      start = _time(first, year)
    m = LINE.match(line)
    if m:
      t = _time(m, year)
      rows.append((t - start, None if m.group(7) else float(m.group(6)), end - t))
  return start, rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("log")
  parser.add_argument("--end", type=float, required=True,
                      help="when the run ended, seconds since the epoch (date +%%s)")
  parser.add_argument("--every", type=float, default=10.0, help="percent between rows")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)
  try:
    with open(args.log) as f:
      start, rows = trace(f, args.end)
  except OSError as e:
    print(f"cannot read {args.log}: {e.strerror}", file=sys.stderr)
    return 2
  if start is None or not rows:
    print(f"{args.log} has no study progress lines with an ETA", file=sys.stderr)
    return 2
  total = args.end - start
  errors = [(elapsed / total, eta, left, abs(eta - left) / left) for elapsed, eta, left in rows
            if eta is not None and left > 0]
  worst = max((e for e in errors if e[0] >= 0.1), key=lambda e: e[3], default=None)
  if args.json:
    print(json.dumps({"log": args.log, "run_s": round(total, 1), "lines": len(rows),
                      "worst_from_10_percent": None if worst is None else {
                          "fraction": round(worst[0], 3), "eta_s": worst[1],
                          "truth_s": round(worst[2], 1), "error": round(worst[3], 3)}}))
    return 0
  print(f"run: {total:.0f} s, {len(rows)} lines with an ETA")
  print("| elapsed | ETA shown | truly left | error |\n|---|---|---|---|")
  mark = 0.0
  for elapsed, eta, left in rows:
    if elapsed / total >= mark / 100:
      shown = "measuring" if eta is None else f"{eta:.0f} s"
      error = "" if eta is None else f"{(eta - left) / left:+.0%}"
      print(f"| {elapsed:.0f} s ({elapsed / total:.0%}) | {shown} | {left:.0f} s | {error} |")
      mark = (elapsed / total * 100 // args.every + 1) * args.every
  if worst is not None:
    print(f"largest error from 10% of the run on: {worst[3]:.0%} (at {worst[0]:.0%}: "
          f"ETA {worst[1]:.0f} s, {worst[2]:.0f} s left)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
