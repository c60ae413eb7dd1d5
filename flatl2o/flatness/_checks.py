"""Argument checks of the flatness package (which imports nothing else of flatl2o)."""

from __future__ import annotations

import contextlib
import math

import jax


def positive_int(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


def positive_number(name: str, value, allow_zero: bool = False) -> None:
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
      0 <= value < math.inf if allow_zero else 0 < value < math.inf)
  if not ok:
    kind = "non-negative" if allow_zero else "positive"
    raise ValueError(f"{name} must be a {kind} number, got {value!r}")


PRECISIONS = ("highest", "float32", "high", "tensorfloat32", "default", "bfloat16", "fastest")


def matmul_precision(precision: str | None):
  """A context computing the matmuls traced inside at `precision` (None: the caller's).

  "highest" (the measures' default) keeps float32 matmuls float32 on GPUs,
  whose default is TF32 (a 1e-3 relative error in Hessian-vector products),
  so reported curvature agrees across CPU and GPU.
  """
  if precision is None:
    return contextlib.nullcontext()
  if precision not in PRECISIONS:
    raise ValueError(f"unknown precision {precision!r}; accepted: None, {', '.join(PRECISIONS)}")
  return jax.default_matmul_precision(precision)
