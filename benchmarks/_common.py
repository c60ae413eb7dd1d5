"""What every benchmark line records about where it ran."""

import os
import platform

import jax


def environment() -> dict:
  preload = os.environ.get("LD_PRELOAD", "")
  allocator = "jemalloc" if "jemalloc" in preload else ("tcmalloc" if "tcmalloc" in preload
                                                        else "glibc")
  return {
      "jax": jax.__version__,
      "backend": jax.default_backend(),
      "device": jax.devices()[0].device_kind,
      "cpu_count": os.cpu_count(),
      "machine": platform.machine(),
      "allocator": allocator,
  }
