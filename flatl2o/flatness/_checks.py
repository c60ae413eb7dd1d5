"""Argument checks of the flatness package (which imports nothing else of flatl2o)."""

from __future__ import annotations

import math


def positive_int(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


def positive_number(name: str, value, allow_zero: bool = False) -> None:
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
      0 <= value < math.inf if allow_zero else 0 < value < math.inf)
  if not ok:
    kind = "non-negative" if allow_zero else "positive"
    raise ValueError(f"{name} must be a {kind} number, got {value!r}")
