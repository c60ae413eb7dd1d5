"""Small-sample statistics of paired comparisons: intervals, corrections, power.

Everything works on plain Python / NumPy floats (no SciPy): the Student t
distribution's CDF for an integer number of degrees of freedom has a closed
form (Abramowitz and Stegun 26.7.3 / 26.7.4), and its quantiles come from
bisection on that CDF.

- `t_cdf(t, df)`, `t_quantile(p, df)`: Student's t.
- `interval(values)`: mean and 95% t-interval over units.
- `paired_difference(a, b)`: the paired t-interval and two-sided p-value of a - b.
- `holm(p_values)`: Holm's step-down adjusted p-values.
- `minimum_detectable_effect(sd, n)`: the smallest paired mean difference a
  paired t-test detects with the given power.
- `spearman(x, y)`: Spearman's rank correlation with a Fisher-z interval.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

NORMAL_975 = 1.959963984540054  # the standard normal's 0.975 quantile


def t_cdf(t: float, df: int) -> float:
  """P(T <= t) for Student's t with `df` (a positive integer) degrees of freedom.

  With theta = atan(t / sqrt(df)) and c = cos(theta), A = P(|T| < |t|) is
    df = 1:        2 theta / pi
    df odd > 1:    (2 / pi) (theta + sin(theta) c (1 + (2/3) c^2 + (2*4)/(3*5) c^4 + ...
                   + (2*4*...*(df-3)) / (3*5*...*(df-2)) c^(df-3)))
    df even:       sin(theta) (1 + (1/2) c^2 + (1*3)/(2*4) c^4 + ...
                   + (1*3*...*(df-3)) / (2*4*...*(df-2)) c^(df-2))
  (Abramowitz and Stegun 26.7.3-4), and P(T <= t) = (1 + sign(t) A) / 2.

  Args:
    t: the point; +-inf give 1 or 0, NaN gives NaN.
    df: the degrees of freedom, a positive integer (an integral float is accepted).

  Returns:
    P(T <= t), a float in [0, 1].

  Raises:
    ValueError: `df` is not a positive integer.
  """
  if df < 1 or int(df) != df:
    raise ValueError(f"degrees of freedom must be a positive integer, got {df!r}")
  df = int(df)
  if math.isnan(t):
    return float("nan")
  if math.isinf(t):
    return 1.0 if t > 0 else 0.0
  theta = math.atan(abs(t) / math.sqrt(df))
  c2 = math.cos(theta) ** 2
  if df % 2:
    total, term = 0.0, 1.0
    if df > 1:
      total = term
      for k in range(3, df - 1, 2):  # ratios 2/3, 4/5, ...
        term *= (k - 1) / k * c2
        total += term
      total *= math.sin(theta) * math.cos(theta)
    a = 2.0 / math.pi * (theta + total)
  else:
    term, total = 1.0, 1.0
    for k in range(2, df - 1, 2):  # ratios 1/2, 3/4, ...
      term *= (k - 1) / k * c2
      total += term
    a = math.sin(theta) * total
  a = min(max(a, 0.0), 1.0)
  return 0.5 * (1.0 + a) if t >= 0 else 0.5 * (1.0 - a)


def t_quantile(p: float, df: int) -> float:
  """The t with P(T <= t) = p (Student's t, integer `df`), by bisection on `t_cdf`.

  Args:
    p: the probability, in (0, 1); the quantile of p < 0.5 is minus that of 1 - p.
    df: the degrees of freedom, a positive integer.

  Returns:
    The quantile t, to float precision (bisection until the bracket stops shrinking).

  Raises:
    ValueError: `p` does not lie in (0, 1).
  """
  if not 0.0 < p < 1.0:
    raise ValueError(f"a quantile's probability must lie in (0, 1), got {p!r}")
  if p < 0.5:
    return -t_quantile(1.0 - p, df)
  lo, hi = 0.0, 1.0
  while t_cdf(hi, df) < p:
    lo, hi = hi, hi * 2.0
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    if mid in (lo, hi):
      break
    if t_cdf(mid, df) < p:
      lo = mid
    else:
      hi = mid
  return 0.5 * (lo + hi)


def _finite(values: Sequence[float]) -> np.ndarray:
  v = np.asarray(list(values), np.float64)
  return v[np.isfinite(v)]


def interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
  """Mean and t-interval over units (non-finite values are left out).

    half width = t_{(1 + confidence) / 2, n - 1} * s / sqrt(n),  s = std(values, ddof=1)

  Args:
    values: one value per unit (e.g. per seed).
    confidence: the interval's confidence level, in (0, 1); the half width is still returned
      under "ci95".

  Returns:
    {"mean", "ci95" (the half width; NaN below two units), "n"}.
  """
  v = _finite(values)
  n = int(v.size)
  if n == 0:
    return {"mean": float("nan"), "ci95": float("nan"), "n": 0}
  half = float("nan")
  if n > 1:
    half = t_quantile(0.5 + confidence / 2, n - 1) * float(v.std(ddof=1)) / math.sqrt(n)
  return {"mean": float(v.mean()), "ci95": half, "n": n}


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
  """a - b unit by unit: mean, 95% t-interval, t statistic and two-sided p-value.

  With d_i = a_i - b_i over the n units where both are finite,
    t = mean(d) / (s_d / sqrt(n)),   p = 2 (1 - F_{n-1}(|t|)).

  Args:
    a: one value per unit (e.g. per seed) of the first method.
    b: the second method's values, unit by unit (the same units, in the same order).

  Returns:
    `interval(a - b)` ({"mean", "ci95", "n"}) with "t" and "p" added; t and p are NaN below
    two finite differences or when the differences do not vary.

  Raises:
    ValueError: `a` and `b` have different lengths.
  """
  if len(a) != len(b):
    raise ValueError(f"paired values need the same number of units, got {len(a)} and {len(b)}")
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  out = interval(d)
  d = _finite(d)
  out["t"], out["p"] = float("nan"), float("nan")
  if d.size > 1:
    sd = float(d.std(ddof=1))
    if sd > 0:
      out["t"] = float(d.mean()) / (sd / math.sqrt(d.size))
      out["p"] = 2.0 * (1.0 - t_cdf(abs(out["t"]), d.size - 1))
  return out


def holm(p_values: Sequence[float], alpha: float = 0.05) -> dict[str, list]:
  """Holm's step-down correction for m tests.

  With the p-values sorted p_(1) <= ... <= p_(m), the adjusted ones are
    q_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)),
  returned in the input order; test i is rejected when q_i <= alpha.

  Args:
    p_values: the m tests' p-values.
    alpha: the family-wise error rate.

  Returns:
    {"adjusted": the adjusted p-values q_i, "rejected": whether q_i <= alpha}, both lists in
    the input order.
  """
  p = [float(x) for x in p_values]
  m = len(p)
  adjusted = [float("nan")] * m
  running = 0.0
  for rank, i in enumerate(sorted(range(m), key=lambda i: p[i])):
    running = max(running, min(1.0, (m - rank) * p[i]))
    adjusted[i] = running
  return {"adjusted": adjusted, "rejected": [q <= alpha for q in adjusted]}


def minimum_detectable_effect(sd: float, n: int, alpha: float = 0.05,
                              power: float = 0.8) -> float:
  """The smallest true mean difference a two-sided paired t-test detects with `power`.

    MDE = (t_{1 - alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)
  (the usual approximation: the noncentral t replaced by a shifted central t),
  with `sd` the standard deviation of the paired differences over n units.

  Args:
    sd: the standard deviation of the paired differences.
    n: the number of units (pairs), at least 2.
    alpha: the two-sided test's significance level, in (0, 1).
    power: the probability of detecting the effect, in (0, 1).

  Returns:
    The minimum detectable effect, in the units of `sd`.

  Raises:
    ValueError: `n` is below 2.
  """
  if n < 2:
    raise ValueError(f"a paired t-test needs at least 2 units, got {n}")
  return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


def ranks(values: Sequence[float]) -> np.ndarray:
  """Ranks from 1, ties sharing their average rank.

  Args:
    values: the values to rank.

  Returns:
    A float64 array of `len(values)` ranks, in the input order (the smallest value ranks 1).
  """
  v = np.asarray(values, np.float64)
  order = np.argsort(v, kind="stable")
  r = np.empty(v.size, np.float64)
  i = 0
  while i < v.size:
    j = i
    while j + 1 < v.size and v[order[j + 1]] == v[order[i]]:
      j += 1
    r[order[i:j + 1]] = (i + j) / 2 + 1
    i = j + 1
  return r


def spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
  """Spearman's rank correlation with a 95% interval through Fisher's z.

  rho is Pearson's correlation of the ranks (ties get average ranks); the
  interval is tanh(atanh(rho) -/+ 1.96 * sqrt(1.06 / (n - 3))) (Fieller,
  Hartley and Pearson 1957's variance for Spearman's rho), NaN for n <= 3.

  Args:
    x: the first variable, one value per unit.
    y: the second variable, unit by unit (as many values as `x`).

  Returns:
    {"rho", "low", "high", "n"}; all NaN but n for n < 2, rho NaN when either variable is
    constant.

  Raises:
    ValueError: `x` and `y` have different lengths.
  """
  if len(x) != len(y):
    raise ValueError(f"spearman needs as many x as y, got {len(x)} and {len(y)}")
  n = len(x)
  if n < 2:
    return {"rho": float("nan"), "low": float("nan"), "high": float("nan"), "n": n}
  rx, ry = ranks(x) - (n + 1) / 2, ranks(y) - (n + 1) / 2
  denominator = math.sqrt(float(rx @ rx) * float(ry @ ry))
  rho = float(rx @ ry) / denominator if denominator else float("nan")
  low = high = float("nan")
  if n > 3 and math.isfinite(rho):
    z, half = math.atanh(min(max(rho, -1 + 1e-15), 1 - 1e-15)), NORMAL_975 * math.sqrt(
        1.06 / (n - 3))
    low, high = math.tanh(z - half), math.tanh(z + half)
  return {"rho": rho, "low": low, "high": high, "n": n}
