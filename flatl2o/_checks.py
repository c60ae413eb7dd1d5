"""Argument checks shared by the library: one line saying what was wrong and what is accepted."""

from __future__ import annotations

import math


def positive_int(name: str, value, error: type[ValueError] = ValueError) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise error(f"{name} must be a positive integer, got {value!r}")


def positive_number(name: str, value, error: type[ValueError] = ValueError) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
    raise error(f"{name} must be a positive number, got {value!r}")
