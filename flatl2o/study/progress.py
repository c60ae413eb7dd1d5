"""One ETA for a whole study, from rates measured as the run goes, start-ups apart.

A study's work is a plan of items (a meta-training cell, a meta-test cell, a
tuning run), each with a number of units (meta-steps, training steps) and a
kind: work of one kind runs at one rate (the meta-steps of one flatness term;
the meta-test steps on one optimizee, kind ``"test:OPTIMIZEE"``; kinds that
share the part before ``:`` form a family). `Progress.update(item, done)` is
called as work goes. The time an item takes before its first report is its
start-up (compilation, restoring a checkpoint, the first validation), kept
apart from the rates. The ETA of the rest of the run is

  sum over unfinished items of (expected units left) x (seconds per unit of its kind)
  + the start-up of every item not yet started,

where

- **seconds per unit** of a kind is measured on that kind's own items over
  the most recent `window_s` seconds of its work (so a load that changes
  mid-run changes the rate within that window). A kind not measured yet takes
  its family's rate, else its `prior` (a reference machine's seconds per unit)
  scaled by how much slower or faster this run went on the kinds it has
  measured. Priors stand in only until something is measured: with nothing
  measured for `min_measured_s` seconds the ETA is "measuring" (a resumed run
  measures again rather than extrapolate from a few seconds).
- **expected units** of an item that can stop early (a meta-training with
  patience) are the mean of what finished items of the same cap ran, never less
  than what it has done nor more than its cap.
- **start-ups**: the first item of a kind in this process compiles: the mean
  first start-up measured in its family, else its `prior_startup` (a reference
  machine's compilation of that family), else the mean first start-up of any
  kind; later items of a kind only pay the median of the later start-ups
  measured in the kind (else its family; else none), since a compiled program is
  reused.

A study skips cached items (`skip`). The clock is an argument, so tests drive it.
"""

from __future__ import annotations

import collections
import dataclasses
import statistics
import time
from typing import Callable


@dataclasses.dataclass
class Item:
  """One unit of planned work.

  Attributes:
    name: the item's name in the plan.
    kind: its kind (work of one kind runs at one rate).
    units: its planned units (a cap for work that can stop early).
    done: units done so far.
    started_at: the clock when it started in this process (None: not yet).
    last_report: (clock, units) of the last report; None before the first.
    finished: done, skipped or cached.
    ran: finished in this process (not skipped): its `done` predicts early stops.
  """

  name: str
  kind: str
  units: int
  done: int = 0
  started_at: float | None = None
  last_report: tuple[float, int] | None = None
  finished: bool = False
  ran: bool = False


def family(kind: str) -> str:
  """The family of a kind: what comes before ':' ("test:mlp_relu" -> "test").

  Args:
    kind: a kind of work.

  Returns:
    The part of `kind` before its first ':', or `kind` itself when it has none.
  """
  return kind.split(":", 1)[0]


class Progress:
  """The plan of a study and its ETA (see the module docstring).

  Args:
    items: (name, kind, units) in the order they will run.
    prior: seconds per unit of each kind (or family) on a reference machine.
    clock: seconds, monotone (`time.perf_counter`).
    prior_startup: seconds of a first start-up (compilation) per kind or family on
      that machine, until one of the family is measured.
    window_s: how far back the rate of a kind looks.
    min_measured_s: measured seconds needed before an ETA is given.
  """

  def __init__(self, items: list[tuple[str, str, int]], prior: dict[str, float],
               clock: Callable[[], float] = time.perf_counter, window_s: float = 300.0,
               min_measured_s: float = 10.0, prior_startup: dict[str, float] | None = None):
    self.items = {name: Item(name, kind, units) for name, kind, units in items}
    self.order = [name for name, _, _ in items]
    self.prior = prior
    self.prior_startup = prior_startup or {}
    self.clock = clock
    self.window_s = window_s
    self.min_measured_s = min_measured_s
    # kind -> (end time, seconds, units) of each measured stretch, oldest first
    self.segments: dict[str, collections.deque] = {}
    self.startups: dict[str, list[float]] = collections.defaultdict(list)
    self.scope = "the whole run"  # what `line` gives the ETA of

  def index(self, name: str, within: str | None = None) -> str:
    """`i/N` of an item in the plan, or among the items whose name starts with `within`.

    Args:
      name: the item's name.
      within: a prefix of the names to count among (None: the whole plan).

    Returns:
      "i/N": the item's 1-based position and the number of items counted.
    """
    order = self.order if within is None else [n for n in self.order if n.startswith(within)]
    return f"{order.index(name) + 1}/{len(order)}"

  def add(self, name: str, kind: str, units: int) -> None:
    """Adds an item to the end of the plan (work known only once earlier work is done).

    Args:
      name: the item's name.
      kind: its kind (work of one kind runs at one rate).
      units: its planned units (a cap for work that can stop early).
    """
    self.items[name] = Item(name, kind, units)
    self.order.append(name)

  def rename(self, old: str, new: str) -> None:
    """Gives a planned item the name of the work that fills it (a sweep point's cell, known
    only once the sweep gets there); its place in the plan is kept.

    Args:
      old: the planned item's name.
      new: its new name (not an item already).

    Raises:
      ValueError: `old` is not an item or `new` already is.
    """
    if old not in self.items or new in self.items:
      raise ValueError(f"cannot rename plan item {old!r} to {new!r}")
    item = self.items.pop(old)
    item.name = new
    self.items[new] = item
    self.order[self.order.index(old)] = new

  def start(self, name: str) -> None:
    """Marks an item started now: its start-up is timed from here to its first report.

    Args:
      name: the item's name.
    """
    self.items[name].started_at = self.clock()

  def skip(self, name: str) -> None:
    """A cached item or one not needed after all: nothing to do.

    Args:
      name: the item's name; it counts as finished with all its units done.
    """
    item = self.items[name]
    item.done, item.finished = item.units, True

  def update(self, name: str, done: int) -> None:
    """`done` units of the item are finished (monotone).

    The first report measures the item's start-up; later ones measure its kind's rate.

    Args:
      name: the item's name.
      done: the units of the item done so far.
    """
    item, now = self.items[name], self.clock()
    if item.started_at is None:
      item.started_at = now
    if item.last_report is None:
      self.startups[item.kind].append(now - item.started_at)
    else:
      t0, u0 = item.last_report
      if done > u0:
        self.segments.setdefault(item.kind, collections.deque()).append(
            (now, now - t0, done - u0))
    item.last_report = (now, done)
    item.done = done

  def finish(self, name: str) -> None:
    """The item ended (early, for work that stops early: its `done` is what it ran).

    Args:
      name: the item's name; with nothing reported yet, all its units count as done.
    """
    item = self.items[name]
    self.update(name, item.done if item.done else item.units)
    item.finished = item.ran = True

  def _measured(self, kinds) -> tuple[float, int]:
    """Seconds and units of the recent work of `kinds` (the last `window_s` of each)."""
    seconds, units = 0.0, 0
    for kind in kinds:
      segments = self.segments.get(kind)
      if not segments:
        continue
      end = segments[-1][0]
      for t, dt, du in reversed(segments):
        seconds += dt
        units += du
        if end - t >= self.window_s:
          break
    return seconds, units

  def rate(self, kind: str) -> float | None:
    """Seconds per unit of `kind` (None while nothing has been measured long enough).

    Measured on the kind's recent work, else its family's; else its prior scaled by how
    this run went against the priors of the kinds it has measured.

    Args:
      kind: a kind of work.

    Returns:
      Seconds per unit, or None.
    """
    for kinds in ([kind], [k for k in self.segments if family(k) == family(kind)]):
      seconds, units = self._measured(kinds)
      if units:
        return seconds / units
    if not self.segments or self.measured_s() < self.min_measured_s:
      return None
    # This machine against the priors over the whole run (one kind's prior may be off),
    # times the drift of the last window's work against the whole run's (a load change).
    history = {k: (sum(dt for _, dt, _ in v), sum(du for _, _, du in v))
               for k, v in self.segments.items()}
    scale = (sum(sec for sec, _ in history.values())
             / sum(units * self._prior(k) for k, (_, units) in history.items()))
    now = max(segments[-1][0] for segments in self.segments.values())
    recent = expected = 0.0
    for k, segments in self.segments.items():
      sec, units = history[k]
      for t, dt, du in reversed(segments):
        if now - t > self.window_s:
          break
        recent += dt
        expected += du * sec / units
    drift = recent / expected if expected else 1.0
    return self._prior(kind) * scale * drift

  def _prior(self, kind: str) -> float:
    return self.prior.get(kind, self.prior.get(family(kind), max(self.prior.values())))

  def expected_units(self, item: Item, ran: dict[int, list[int]] | None = None) -> float:
    """What an unfinished item is expected to run in all (early stops seen so far).

    Args:
      item: the item.
      ran: units cap -> units that finished items of that cap ran (None: from the plan).

    Returns:
      The mean of what finished items of the same cap ran (the cap when none has),
      clipped to between the item's `done` and its cap.
    """
    if ran is None:
      ran = self._ran()
    runs = ran.get(item.units)
    expected = sum(runs) / len(runs) if runs else item.units
    return min(item.units, max(item.done, expected))

  def _ran(self) -> dict[int, list[int]]:
    ran = collections.defaultdict(list)
    for i in self.items.values():
      if i.ran:
        ran[i.units].append(i.done)
    return ran

  def startup(self, kind: str, first: bool) -> float:
    """The start-up of an item of `kind` not yet started.

    A compilation when it is the first of its kind in this process, else the median later
    start-up.

    Args:
      kind: the item's kind.
      first: whether it is the first item of its kind to start in this process.

    Returns:
      The expected start-up in seconds (0.0 when nothing measured or prior applies).
    """
    if first:
      mine = [v[0] for k, v in self.startups.items() if v and family(k) == family(kind)]
      if mine:
        return sum(mine) / len(mine)
      for key in (kind, family(kind)):
        if key in self.prior_startup:
          return self.prior_startup[key]
      firsts = [v[0] for v in self.startups.values() if v]
      return sum(firsts) / len(firsts) if firsts else 0.0
    # A meta-training's start-up (its first logged meta-steps) says nothing of a meta-test's.
    later = self.startups.get(kind, [])[1:] or [
        s for k in self.startups if family(k) == family(kind) for s in self.startups[k][1:]]
    return statistics.median(later) if later else 0.0

  def measured_s(self) -> float:
    """Seconds of work measured in this process (start-ups apart).

    Returns:
      The sum of the measured stretches of every kind, in seconds.
    """
    return sum(dt for segments in self.segments.values() for _, dt, _ in segments)

  def eta(self) -> float | None:
    """Seconds left for the whole plan (None until a rate is measured).

    Returns:
      The expected units left times the rate of each unfinished item, plus the start-up of
      each item not yet started; None while a rate is not known.
    """
    if self.measured_s() < self.min_measured_s and not any(
        i.ran for i in self.items.values()):
      return None
    total, starting, ran = 0.0, collections.Counter(), self._ran()
    rates = {}
    for name in self.order:
      item = self.items[name]
      if item.finished:
        continue
      if item.kind not in rates:
        rates[item.kind] = self.rate(item.kind)
      rate = rates[item.kind]
      if rate is None:
        return None
      total += (self.expected_units(item, ran) - item.done) * rate
      if item.started_at is None:
        first = not self.startups.get(item.kind) and not starting[item.kind]
        total += self.startup(item.kind, first)
        starting[item.kind] += 1
    return total

  def line(self) -> str:
    """`ETA ... s` for the whole run (`scope`), or that it is still being measured.

    Returns:
      "ETA for the whole run N s", or "ETA for the whole run: measuring".
    """
    eta = self.eta()
    return f"ETA for {self.scope}: measuring" if eta is None else (
        f"ETA for {self.scope} {eta:.0f} s")
