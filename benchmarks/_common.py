"""Shared pieces of the benchmarks: the MNIST-shaped task and meta-step timing.

Every benchmark line also carries `flatl2o.environment.describe()` (machine,
JAX version and backend, allocator, package versions).
"""

import jax


def mnist_shaped_task(dataset: str | None, num_examples: int = 8000, batch_size: int = 128):
  """mlp_sigmoid on `dataset`, or on random MNIST-shaped images when None."""
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
  return tasks.get("mlp_sigmoid", loaded, batch_size=batch_size)


def compile_meta_step(lopt, task, config, *, abstract_states: bool = False):
  """AOT-compiles `meta.meta_step` for `config`.

  Returns `(compiled, compile seconds, (meta_params, opt_state, states))`; with
  `abstract_states` the meta-batch is only shapes (nothing allocated: for
  memory figures of meta-batches that would not fit).
  """
  import time  # pylint: disable=g-import-not-at-top
  from flatl2o import meta  # pylint: disable=g-import-not-at-top
  meta_params = lopt.init(jax.random.key(0))
  opt_state = meta.meta_optimizer(config).init(meta_params)
  make_states = lambda: meta.init_meta_batch(lopt, config, task, meta_params, jax.random.key(1))
  states = jax.eval_shape(make_states) if abstract_states else make_states()
  start = time.perf_counter()
  compiled = meta.meta_step.lower(lopt, config, task, meta_params, opt_state, states,
                                  jax.random.key(2)).compile()
  return compiled, time.perf_counter() - start, (meta_params, opt_state, states)


def time_meta_step(lopt, task, config, steps: int, warmup: int = 1):
  """AOT-compiles `meta.meta_step` for `config`; returns (compile seconds, per-step seconds)."""
  import time  # pylint: disable=g-import-not-at-top
  compiled, compile_s, (meta_params, opt_state, states) = compile_meta_step(lopt, task, config)
  times = []
  for i in range(steps + warmup):
    start = time.perf_counter()
    meta_params, opt_state, states, metrics = compiled(task, meta_params, opt_state, states,
                                                       jax.random.key(10 + i))
    jax.block_until_ready((meta_params, metrics))
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return compile_s, times


def time_variants(lopt, task, configs: dict, steps: int, baseline: str) -> dict:
  """`{name: {"ms", "compile_s", "ratio"}}`: the median meta-step of each configuration,
  its AOT compile time, and its time as a ratio to `configs[baseline]`'s."""
  import statistics  # pylint: disable=g-import-not-at-top
  out = {}
  for name, config in configs.items():
    compile_s, times = time_meta_step(lopt, task, config, steps=steps)
    out[name] = {"ms": round(1e3 * statistics.median(times), 1), "compile_s": round(compile_s, 2)}
  for v in out.values():
    v["ratio"] = round(v["ms"] / out[baseline]["ms"], 3)
  return out
