r"""Meta-training several seeds at once: one vmapped meta-step vs one meta-step per seed.

  python -m benchmarks.population [--population=5] [--task=mlp_sigmoid] [--dataset=digits]

Issue 20's study meta-trains >= 5 seeds of each configuration; this measures
whether a population (a leading axis of meta-parameter sets, meta-optimizer
states and meta-batches, `jax.vmap` over `meta.meta_step`: one compilation, one
jitted step) beats stepping the seeds one after another, in one process. Both
run the same work: --population seeds x one truncation of --unroll_length inner
steps on --meta_batch_size optimizees. Prints one JSON line with
`ms_per_round` (all seeds advanced by one meta-step) of each way and
`sequential_over_population` (> 1: the population is faster).
"""

import json
import statistics
import time

import jax
from absl import app, flags

from flatl2o import environment, meta, optimizers, tasks

_POPULATION = flags.DEFINE_integer("population", 5, "Seeds meta-trained together.")
_OPTIMIZER = flags.DEFINE_string("optimizer", "l2o_dm", "Learned architecture.")
_TASK = flags.DEFINE_string("task", "mlp_sigmoid", "Optimizee.")
_DATASET = flags.DEFINE_string("dataset", "digits", "Dataset.")
_UNROLL = flags.DEFINE_integer("unroll_length", 20, "Inner steps per truncation.")
_META_BATCH = flags.DEFINE_integer("meta_batch_size", 4, "Optimizees per seed and meta-step.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed rounds.")


def _timed(fn, args, steps):
  """(compile seconds, per-call seconds) of `fn`, which returns its next `args`."""
  start = time.perf_counter()
  args = jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    args = jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return compile_s, times


def main(argv):
  del argv
  lopt = optimizers.learned(_OPTIMIZER.value)
  task = tasks.get(_TASK.value, _DATASET.value)
  size = _POPULATION.value
  config = meta.MetaTrainConfig(unroll_length=_UNROLL.value, num_inner_steps=10 * _UNROLL.value,
                                meta_batch_size=_META_BATCH.value, num_devices=1,
                                meta_loss=lopt.preferred_meta_loss).unroll_config()
  keys = jax.random.split(jax.random.key(0), size)
  meta_params = jax.vmap(lopt.init)(keys)
  opt_states = jax.vmap(meta.meta_optimizer(config).init)(meta_params)
  states = jax.vmap(lambda p, k: meta.init_meta_batch(lopt, config, task, p, k))(
      meta_params, keys)
  step_keys = jax.random.split(jax.random.key(1), size)
  row = lambda tree, i: jax.tree.map(lambda x: x[i], tree)

  def one_seed(p, o, s, k):
    p, o, s, _ = meta.meta_step(lopt, config, task, p, o, s, k)
    return p, o, s, k

  population = jax.jit(jax.vmap(one_seed))
  seeds = [tuple(row(t, i) for t in (meta_params, opt_states, states, step_keys))
           for i in range(size)]

  def sequential(*all_seeds):
    return tuple(one_seed(*seed) for seed in all_seeds)

  seq_compile, seq_times = _timed(sequential, seeds, _STEPS.value)
  pop_compile, pop_times = _timed(population, (meta_params, opt_states, states, step_keys),
                                  _STEPS.value)
  seq_ms, pop_ms = 1e3 * statistics.median(seq_times), 1e3 * statistics.median(pop_times)
  print(json.dumps({
      "benchmark": "population", "optimizer": lopt.name, "task": _TASK.value,
      "dataset": task.dataset_name, "population_size": size, "unroll_length": _UNROLL.value,
      "meta_batch_size": _META_BATCH.value,
      "sequential": {"ms_per_round": round(seq_ms, 1), "first_call_s": round(seq_compile, 2)},
      "population": {"ms_per_round": round(pop_ms, 1), "first_call_s": round(pop_compile, 2)},
      "sequential_over_population": round(seq_ms / pop_ms, 3), **environment.describe()}))


if __name__ == "__main__":
  app.run(main)
