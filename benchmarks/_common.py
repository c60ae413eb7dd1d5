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


def mnist_shaped_task(dataset: str | None, num_examples: int = 8000):
  """mlp_sigmoid (batch 128) on `dataset`, or on random MNIST-shaped images when None."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flatl2o import data, tasks  # pylint: disable=g-import-not-at-top
  if dataset:
    loaded = data.load(dataset)
  else:
    rng = np.random.default_rng(0)
    loaded = data.from_arrays(
        "synthetic-mnist-shape",
        (rng.integers(0, 256, (num_examples, 28, 28, 1), dtype=np.uint8),
         rng.integers(0, 10, num_examples)), num_classes=10)
  return tasks.get("mlp_sigmoid", loaded, batch_size=128)
