"""The study's ETA on a scripted clock: known answers for each part, and within 30% of the
truth once a tenth is done on plans shaped like the default study (early stops, compilation
only on the first item of a kind, a load that changes mid-run)."""

from absl.testing import absltest, parameterized

from flatl2o.study.progress import Progress


class Clock:

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def _simulate(plan, seconds_per_unit, prior, *, compile_s, startup_s, report_every,
              stops_at=None, slowdown_at=None):
  """Runs the plan on a scripted clock; returns [(time, fraction done, eta, truth)].

  `stops_at(name)`: the units an item really runs (early stops); `slowdown_at`: (time,
  factor) from which every unit takes `factor` times longer (another job starts).
  """
  def cost(kind, started):
    factor = slowdown_at[1] if slowdown_at and started >= slowdown_at[0] else 1.0
    return seconds_per_unit[kind] * factor

  # the truth: replay the same schedule without the ETA
  def timeline():
    now, compiled, events = 0.0, set(), []
    for name, kind, units in plan:
      now += startup_s if kind in compiled else compile_s
      compiled.add(kind)
      events.append((name, 0, now))
      end = stops_at(name) if stops_at else units
      for done in range(report_every, end + 1, report_every):
        now += report_every * cost(kind, now)
        events.append((name, done, now))
    return events

  events = timeline()
  total = events[-1][2]
  clock = Clock()
  progress = Progress(plan, prior, clock)
  seen, current = [], None
  for name, done, now in events:
    if name != current:
      if current is not None:
        progress.finish(current)
      progress.start(name)
      current = name
    clock.now = now
    progress.update(name, done)
    eta = progress.eta()
    if eta is not None:
      seen.append((now, now / total, eta, total - now))
  return seen


DEFAULT_STUDY = ([(f"{k}-s{s}", k, 700) for k in ("none", "hessian", "entropy")
                  for s in range(5)]
                 + [(f"test {o} {i}", f"test:{o}", 2000) for o in ("a", "b", "c")
                    for i in range(16)])


class EtaWithinThirtyPercentTest(parameterized.TestCase):

  PRIOR = dict(none=0.08, hessian=0.14, entropy=0.16, test=0.0005)  # a reference machine

  def _check(self, seen, checked_from=lambda now, fraction: fraction >= 0.1):
    checked = 0
    for now, fraction, eta, truth in seen:
      if checked_from(now, fraction) and truth > 1.0:
        self.assertLess(abs(eta - truth) / truth, 0.3, (fraction, eta, truth))
        checked += 1
    self.assertGreater(checked, 100)

  @parameterized.parameters(
      # 3x slower than the priors, every kind ...
      (dict(none=0.24, hessian=0.42, entropy=0.48, **{"test:a": 0.0015, "test:b": 0.0018,
                                                     "test:c": 0.002}),),
      # ... and kinds off the priors by up to 20% either way
      (dict(none=0.08, hessian=0.17, entropy=0.13, **{"test:a": 0.0005, "test:b": 0.0006,
                                                    "test:c": 0.0006}),),
  )
  def test_default_study_shape(self, rates):
    # compilation (25 s) only on a kind's first item; meta-trainings stop at 600-700
    stops = lambda name: 700 - 50 * (sum(map(ord, name)) % 3) if not name.startswith("test") else 2000
    self._check(_simulate(DEFAULT_STUDY, rates, self.PRIOR, compile_s=25.0, startup_s=0.5,
                          report_every=50, stops_at=stops))

  def test_a_job_that_starts_mid_run(self):
    rates = dict(none=0.1, hessian=0.2, entropy=0.25, **{"test:a": 0.002, "test:b": 0.002,
                                                         "test:c": 0.002})
    prior = dict(none=0.1, hessian=0.2, entropy=0.25, test=0.002)  # this machine, idle
    seen = _simulate(DEFAULT_STUDY, rates, prior, compile_s=20.0, startup_s=0.5,
                     report_every=10, slowdown_at=(600.0, 2.0))
    # one rate window (300 s) after the other job started, the ETA has followed it
    self._check(seen, checked_from=lambda now, fraction: now >= 900.0)


class KnownAnswersTest(absltest.TestCase):

  def test_rate_startups_and_priors(self):
    clock = Clock()
    p = Progress([("a", "x", 10), ("b", "x", 10), ("c", "y", 4)], {"x": 1.0, "y": 2.0}, clock,
                 min_measured_s=0.0)
    p.start("a")
    self.assertIsNone(p.eta())
    clock.now = 5.0                     # 5 s of compilation
    p.update("a", 0)
    clock.now = 7.0                     # then 2 s for 4 units
    p.update("a", 4)
    self.assertAlmostEqual(p.rate("x"), 0.5)
    # not measured: its prior (2 s) scaled as x ran against its prior (0.5 / 1.0)
    self.assertAlmostEqual(p.rate("y"), 1.0)
    # a: 6 units left; b: 10 units, compiled already (no later start-up measured: 0);
    # c: 4 units + a compilation (the mean first start-up, 5 s)
    self.assertAlmostEqual(p.eta(), 6 * 0.5 + 10 * 0.5 + (4 * 1.0 + 5.0))
    p.skip("b")
    self.assertAlmostEqual(p.eta(), 6 * 0.5 + (4 * 1.0 + 5.0))
    self.assertEqual(p.index("c"), "3/3")
    self.assertEqual(p.index("c", within="c"), "1/1")

  def test_a_family_compiles_as_its_prior_says_until_one_is_measured(self):
    clock = Clock()
    p = Progress([("a", "x", 10), ("b", "test:one", 4), ("c", "test:two", 4)],
                 {"x": 1.0, "test": 1.0}, clock, min_measured_s=0.0,
                 prior_startup={"test": 1.5})
    p.start("a")
    clock.now = 20.0
    p.update("a", 0)                    # x compiles for 20 s
    clock.now = 30.0
    p.update("a", 10)
    p.finish("a")
    # b and c: 4 units at x's scale (1.0) + each its family's prior compilation, not x's 20 s
    self.assertAlmostEqual(p.eta(), 2 * (4 * 1.0 + 1.5))
    p.start("b")
    clock.now = 33.0
    p.update("b", 0)                    # test compiles for 3 s: measured, it replaces the prior
    self.assertAlmostEqual(p.startup("test:two", first=True), 3.0)

  def test_a_meta_trainings_start_up_is_not_a_meta_tests(self):
    clock = Clock()
    p = Progress([("a", "x", 10), ("b", "x", 10), ("t1", "test:one", 4), ("t2", "test:one", 4)],
                 {"x": 1.0, "test": 1.0}, clock, min_measured_s=0.0,
                 prior_startup={"test": 1.0})
    for name, startup in (("a", 20.0), ("b", 6.0)):   # x: a compilation, then 6 s each
      p.start(name)
      clock.now += startup
      p.update(name, 0)
      clock.now += 10.0
      p.update(name, 10)
      p.finish(name)
    # t1 compiles (its prior, 1 s); t2 reuses it and pays no meta-training's 6 s
    self.assertAlmostEqual(p.eta(), 2 * 4 * 1.0 + 1.0)

  def test_later_startups_and_early_stops(self):
    clock = Clock()
    plan = [("a", "x", 100), ("b", "x", 100), ("c", "x", 100)]
    p = Progress(plan, {"x": 1.0}, clock, min_measured_s=0.0)
    p.start("a")
    clock.now = 30.0
    p.update("a", 0)                    # compilation
    clock.now = 90.0
    p.update("a", 60)                   # 1 s per unit; stops early at 60 (patience)
    p.finish("a")
    p.start("b")
    clock.now = 92.0
    p.update("b", 0)                    # a later start-up: 2 s
    clock.now = 102.0
    p.update("b", 10)
    # b is expected to run 60 like a: 50 left; c: 60 units + a later start-up of 2 s
    self.assertAlmostEqual(p.eta(), 50 * 1.0 + 60 * 1.0 + 2.0)
    self.assertAlmostEqual(p.expected_units(p.items["c"]), 60)
    clock.now = 152.0
    p.update("b", 60)
    clock.now = 172.0
    p.update("b", 80)                   # past the mean: never expected below what it did
    self.assertAlmostEqual(p.expected_units(p.items["b"]), 80)

  def test_family_rate_before_the_prior(self):
    clock = Clock()
    p = Progress([("a", "test:one", 10), ("b", "test:two", 10)], {"test": 5.0}, clock,
                 min_measured_s=0.0)
    p.start("a")
    p.update("a", 0)
    clock.now = 3.0
    p.update("a", 10)
    p.finish("a")
    self.assertAlmostEqual(p.rate("test:two"), 0.3)  # its family's measured rate

  def test_recent_window_follows_a_load_change(self):
    clock = Clock()
    p = Progress([("a", "x", 10_000)], {"x": 1.0}, clock, window_s=100.0)
    p.start("a")
    p.update("a", 0)
    for done in range(10, 1001, 10):     # 1 s per unit for 1000 s
      clock.now += 10.0
      p.update("a", done)
    for done in range(1010, 1201, 10):   # then 2 s per unit for 400 s
      clock.now += 20.0
      p.update("a", done)
    self.assertAlmostEqual(p.rate("x"), 2.0)

  def test_measuring_until_enough_is_measured(self):
    clock = Clock()
    p = Progress([("a", "x", 1000)], {"x": 1.0}, clock, min_measured_s=10.0)
    p.start("a")
    p.update("a", 0)
    clock.now = 4.0
    p.update("a", 10)
    self.assertIsNone(p.eta())           # 4 s: a resumed run does not extrapolate yet
    self.assertIn("measuring", p.line())
    clock.now = 12.0
    p.update("a", 30)
    self.assertAlmostEqual(p.eta(), 970 * 0.4)


if __name__ == "__main__":
  absltest.main()
