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


def time_meta_step(lopt, task, config, steps: int, warmup: int = 1):
  """AOT-compiles `meta.meta_step` for `config`; returns (compile seconds, per-step seconds)."""
  import time  # pylint: disable=g-import-not-at-top
  from flatl2o import meta  # pylint: disable=g-import-not-at-top
  theta = lopt.init(jax.random.key(0))
  opt_state = meta.trainer.meta_optimizer(config).init(theta)
  states = meta.trainer.init_states(lopt, config, task, theta, jax.random.key(1))
  start = time.perf_counter()
  compiled = meta.meta_step.lower(lopt, config, task, theta, opt_state, states,
                                  jax.random.key(2)).compile()
  compile_s = time.perf_counter() - start
  times = []
  for i in range(steps + warmup):
    start = time.perf_counter()
    theta, opt_state, states, metrics = compiled(task, theta, opt_state, states,
                                                 jax.random.key(10 + i))
    jax.block_until_ready((theta, metrics))
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return compile_s, times
