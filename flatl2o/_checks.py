"""Argument checks shared by the library: one line saying what was wrong and what is accepted."""

from __future__ import annotations

import difflib
import math
from typing import Iterable


def positive_int(name: str, value, error: type[ValueError] = ValueError) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise error(f"{name} must be a positive integer, got {value!r}")


def positive_number(name: str, value, error: type[ValueError] = ValueError) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
    raise error(f"{name} must be a positive number, got {value!r}")


def did_you_mean(name, accepted: Iterable[str]) -> str:
  """' (did you mean 'adam'?)' when `name` is close to one accepted name, else ''."""
  if not isinstance(name, str):
    return ""
  close = difflib.get_close_matches(name, list(accepted), n=1, cutoff=0.75)
  return f" (did you mean {close[0]!r}?)" if close else ""
