"""The study's ETA with a scripted clock: within 30% of the truth once a tenth is done."""

from absl.testing import absltest, parameterized

from flatl2o.study.progress import Progress


class Clock:

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def _simulate(plan, seconds_per_unit, startup, report_every, prior):
  """Runs the plan on a scripted clock; returns [(fraction of time done, eta, truth)]."""
  clock = Clock()
  progress = Progress(plan, prior, clock)
  total = sum(startup + units * seconds_per_unit[kind] for _, kind, units in plan)
  seen = []
  for name, kind, units in plan:
    progress.start(name)
    clock.now += startup  # compilation, first validation: before the first report
    progress.update(name, 0)
    for done in range(report_every, units + 1, report_every):
      clock.now += report_every * seconds_per_unit[kind]
      progress.update(name, done)
      eta = progress.eta()
      if eta is not None:
        seen.append((clock.now / total, eta, total - clock.now))
    progress.finish(name)
  return seen


class ProgressTest(parameterized.TestCase):

  PRIOR = dict(none=0.08, hessian=0.14, entropy=0.16, test=0.0005)  # a reference machine

  @parameterized.parameters(
      # the default study's shape on a machine 3x slower than the priors' ...
      (dict(none=0.24, hessian=0.42, entropy=0.48, test=0.0015), 8.0),
      # ... and on one whose kinds are off the priors by up to 40% either way
      (dict(none=0.08, hessian=0.2, entropy=0.12, test=0.0007), 20.0),
  )
  def test_within_30_percent_once_a_tenth_is_done(self, rates, startup):
    plan = [(f"{k}-s{s}", k, 700) for s in range(5) for k in ("none", "hessian", "entropy")]
    plan += [(f"test-{i}", "test", 2000) for i in range(20)]
    checked = 0
    for fraction, eta, truth in _simulate(plan, rates, startup, 50, self.PRIOR):
      if fraction >= 0.1 and truth > 1.0:
        self.assertLess(abs(eta - truth) / truth, 0.3, (fraction, eta, truth))
        checked += 1
    self.assertGreater(checked, 100)

  def test_the_exact_rate_of_a_kind_and_startups_apart(self):
    clock = Clock()
    p = Progress([("a", "x", 10), ("b", "x", 10), ("c", "y", 4)], {"x": 1.0, "y": 2.0}, clock)
    p.start("a")
    self.assertIsNone(p.eta())
    clock.now = 5.0                     # 5 s of compilation
    p.update("a", 0)
    clock.now = 7.0                     # then 2 s for 4 units
    p.update("a", 4)
    self.assertAlmostEqual(p.rate("x"), 0.5)
    # not measured: its prior (2 s) scaled as x ran against its prior (0.5 / 1.0)
    self.assertAlmostEqual(p.rate("y"), 1.0)
    # a: 6 units left; b: 10 units + one start-up; c: 4 units + one start-up
    self.assertAlmostEqual(p.eta(), 6 * 0.5 + (10 * 0.5 + 5.0) + (4 * 1.0 + 5.0))
    p.skip("b")
    self.assertAlmostEqual(p.eta(), 6 * 0.5 + (4 * 1.0 + 5.0))
    self.assertEqual(p.index("c"), "3/3")


if __name__ == "__main__":
  absltest.main()
