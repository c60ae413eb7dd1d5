"""One ETA for a whole study, from the rates measured so far, compilation apart.

A study's work is a plan of items (a meta-training cell, a meta-test cell),
each with a number of units (meta-steps, training steps) and a kind (work of one
kind runs at one rate: the meta-steps of one flatness term, meta-test steps).
`Progress.update(item, units_done)` is called as work goes; the time an item
takes before its first report is its start-up (compilation, the first
validation), kept apart from the rate. The ETA of the rest of the run is

  sum over remaining units of (seconds per unit of their kind)
  + one start-up per item still to start,

the seconds per unit of a kind measured on its own items, and the start-up the
mean of the start-ups measured so far. A kind not yet measured (the meta-tests
while meta-training runs) takes its `prior` seconds per unit (a reference
machine's), scaled by how much slower or faster this machine ran the kinds
measured so far than their priors say. A study with a cached cell skips it
(`skip`). The clock is an argument, so tests drive it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable


@dataclasses.dataclass
class Item:
  name: str
  kind: str
  units: int
  done: int = 0
  started_at: float | None = None
  first_report: tuple[float, int] | None = None  # (time, units) when rates start counting
  measured_s: float = 0.0  # seconds and units since then, counted in the kind's rate
  measured_units: int = 0
  finished: bool = False


class Progress:
  """The plan of a study and its ETA (see the module docstring)."""

  def __init__(self, items: list[tuple[str, str, int]], prior: dict[str, float],
               clock: Callable[[], float] = time.perf_counter):
    self.items = {name: Item(name, kind, units) for name, kind, units in items}
    self.order = [name for name, _, _ in items]
    self.prior = prior
    self.clock = clock
    self.seconds: dict[str, float] = {}  # kind -> measured seconds (after start-up)
    self.units: dict[str, int] = {}  # kind -> units measured in those seconds
    self.startups: list[float] = []

  def index(self, name: str) -> str:
    """`i/N` of an item in the plan."""
    return f"{self.order.index(name) + 1}/{len(self.order)}"

  def start(self, name: str) -> None:
    item = self.items[name]
    item.started_at = self.clock()

  def skip(self, name: str) -> None:
    """A cached item: nothing to do."""
    item = self.items[name]
    item.done, item.finished = item.units, True

  def update(self, name: str, done: int) -> None:
    """`done` units of the item are finished (monotone)."""
    item, now = self.items[name], self.clock()
    if item.started_at is None:
      item.started_at = now
    if item.first_report is None:
      self.startups.append(now - item.started_at)
      item.first_report = (now, done)
    else:
      t0, u0 = item.first_report
      seconds, units = now - t0, done - u0
      kind = item.kind
      self.seconds[kind] = self.seconds.get(kind, 0.0) + seconds - item.measured_s
      self.units[kind] = self.units.get(kind, 0) + units - item.measured_units
      item.measured_s, item.measured_units = seconds, units
    item.done = done

  def finish(self, name: str) -> None:
    item = self.items[name]
    self.update(name, item.done if item.done else item.units)
    item.finished = True

  def rate(self, kind: str) -> float | None:
    """Seconds per unit of `kind` (None before any measurement)."""
    if self.units.get(kind):
      return self.seconds[kind] / self.units[kind]
    measured = [k for k in self.units if self.units[k]]
    if not measured:
      return None
    scale = (sum(self.seconds[k] for k in measured)
             / sum(self.units[k] * self.prior[k] for k in measured))
    return self.prior[kind] * scale

  def eta(self) -> float | None:
    """Seconds left for the whole plan (None until a rate is measured)."""
    startup = sum(self.startups) / len(self.startups) if self.startups else 0.0
    total = 0.0
    for item in self.items.values():
      if item.finished:
        continue
      rate = self.rate(item.kind)
      if rate is None:
        return None
      total += (item.units - item.done) * rate
      if item.first_report is None:
        total += startup
    return total

  def line(self) -> str:
    """`ETA 1234 s` for the whole run, or that it is not known yet."""
    eta = self.eta()
    return "ETA for the whole run: measuring" if eta is None else (
        f"ETA for the whole run {eta:.0f} s")
