"""Where a run or a benchmark ran: recorded beside every figure and in every run directory.

Example:
  >>> flatl2o.environment.describe()["backend"]
  'cpu'
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

import jax

PACKAGES = ("flatl2o", "jax", "jaxlib", "optax", "flax", "chex", "orbax-checkpoint", "numpy",
            "tensorflow-datasets", "ml-collections")


def allocator() -> str:
  """The malloc in use: XLA's CPU speed depends on it (docs/performance.md).

  Returns:
    "jemalloc" or "tcmalloc" when `LD_PRELOAD` names it, else "glibc".
  """
  preload = os.environ.get("LD_PRELOAD", "")
  for name in ("jemalloc", "tcmalloc"):
    if name in preload:
      return name
  return "glibc"


def describe() -> dict[str, Any]:
  """Python, platform, JAX backend and device, allocator, and package versions.

  Returns:
    A JSON-able dict with keys "python", "platform", "machine", "cpu_count", "jax", "backend",
    "device" (the first device's kind), "device_count", "allocator" and "packages" (each of
    `PACKAGES` mapped to its installed version, or None when it is not installed).
  """
  versions = {}
  for package in PACKAGES:
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = None
  return {
      "python": platform.python_version(),
      "platform": platform.platform(),
      "machine": platform.machine(),
      "cpu_count": os.cpu_count(),
      "jax": jax.__version__,
      "backend": jax.default_backend(),
      "device": jax.devices()[0].device_kind,
      "device_count": jax.device_count(),
      "allocator": allocator(),
      "packages": versions,
  }
