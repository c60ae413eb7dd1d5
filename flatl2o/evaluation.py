"""Train an optimizee with any optax transformation and report its curves.

`train(task, tx, num_steps, key)` runs jit-compiled `lax.scan` chunks of
`eval_every` steps; between chunks it evaluates the full validation and test
splits. Minibatches are drawn inside the chunk from `fold_in(data_key, step)`,
so two optimizers run with the same `key` see the same initialisation and the
same batch stream (paired comparisons). Transformations that take extra
arguments (an `update` with `**extra_args`, or `loss` / `grad_fn` parameters)
receive the minibatch loss as `loss=` (learned optimizers) and a minibatch
gradient function as `grad_fn=` (Entropy-SGD); others are called plainly.
`flatness_measures` and `loss_landscape` (filter-normalised 1-D and 2-D
slices) describe a solution on the same fixed training batch.

Example:
  >>> task = flatl2o.tasks.get("mlp_sigmoid", dataset="digits")
  >>> result = flatl2o.evaluation.train(task, optax.adam(1e-2), 1000, jax.random.key(0))
  >>> result.metrics["test"]["accuracy"][-1]
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flatl2o import _checks
from flatl2o import flatness as flatness_lib


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """Curves of one training run.

  Attributes:
    train_loss: `[num_steps]` minibatch loss at each step, before its update.
    eval_steps: `[E]` steps after which the splits were evaluated (0 first).
    metrics: `split -> metric name -> [E]` full-split metrics at `eval_steps`.
    params: the final optimizee parameters.
    wall_time_s: seconds for the whole call, compilation included.
    steps_per_second: training speed over the chunks after the first (which
      compiles); NaN when there is only one chunk.
    flatness: `step -> flatness_measures(...)` of the parameters at each
      step of `flatness_at` (the training loss over a fixed batch).
    params_at: `step -> parameters` after each step of `keep_params_at`.
  """

  train_loss: np.ndarray
  eval_steps: np.ndarray
  metrics: dict[str, dict[str, np.ndarray]]
  params: Any
  wall_time_s: float
  steps_per_second: float
  flatness: dict[int, dict[str, float]] = dataclasses.field(default_factory=dict)
  params_at: dict[int, Any] = dataclasses.field(default_factory=dict)

  def final(self, split: str = "test") -> dict[str, float]:
    """The metrics of `split` at the last evaluation (the end of training).

    Args:
      split: one of the evaluated splits (the keys of `metrics`).

    Returns:
      `metric name -> value` at the last of `eval_steps`, as Python floats.
    """
    return {k: float(v[-1]) for k, v in self.metrics[split].items()}


# How flatness of a solution is measured (fixed, so runs compare): the training
# loss on the first FLATNESS_BATCH training examples; Hutchinson with 32
# probes; 20 Lanczos steps; -F - f at gamma = 1000 (perturbations of std 0.03
# per coordinate) from 128 samples.
FLATNESS_BATCH = 2048
FLATNESS_GAMMA = 1000.0


@jax.jit
def flatness_measures(task, params, key: jax.Array) -> dict[str, jax.Array]:
  """Hessian trace, top eigenvalue and local-entropy gap of the training loss at `params`.

  Also returns the loss itself (`flatness_batch_loss`): compare flatness at
  matched training loss, since the trace falls with the loss (docs/science.md).

  Args:
    task: the optimizee (`flatl2o.tasks.get`); its loss on `task.fixed_batch(FLATNESS_BATCH)`
      is measured.
    params: the optimizee parameters to measure at.
    key: PRNG key, split into three: the Hutchinson probes, the Lanczos start vector and the
      local-entropy perturbations.

  Returns:
    Scalar arrays: "flatness_batch_loss", "hessian_trace" (Hutchinson, 32 probes),
    "top_eigenvalue" (top Ritz value of 20 Lanczos steps) and "local_entropy_gap" (-F - f at
    gamma = FLATNESS_GAMMA, 128 samples).
  """
  batch = task.fixed_batch(FLATNESS_BATCH)
  f = lambda p: task.loss(p, batch)
  k1, k2, k3 = jax.random.split(key, 3)
  return {
      "flatness_batch_loss": f(params),
      "hessian_trace": flatness_lib.hessian_trace(f, params, k1, num_probes=32),
      "top_eigenvalue": flatness_lib.lanczos(f, params, k2, num_iters=20).top_eigenvalue,
      "local_entropy_gap": flatness_lib.local_entropy_gap(f, params, k3, gamma=FLATNESS_GAMMA,
                                                      num_samples=128),
  }


# Loss-landscape slices (Li et al. 2018) of the same training loss: 41 points
# on [-1, 1] along one filter-normalised direction, a 21 x 21 grid on [-1, 1]^2
# along it and a second one.
LANDSCAPE_POINTS_1D = 41
LANDSCAPE_POINTS_2D = 21


@functools.partial(jax.jit, static_argnames="include_biases")
def _landscape(task, params, key, alphas, grid, include_biases):
  batch = task.fixed_batch(FLATNESS_BATCH)
  f = lambda p: task.loss(p, batch)
  k1, k2 = jax.random.split(key)
  d1 = flatness_lib.filter_normalized_direction(k1, params, include_biases=include_biases)
  d2 = flatness_lib.filter_normalized_direction(k2, params, include_biases=include_biases)
  return (flatness_lib.loss_slice_1d(f, params, d1, alphas),
          flatness_lib.loss_slice_2d(f, params, d1, d2, grid, grid))


def loss_landscape(task, params, key: jax.Array, radius: float = 1.0,
                   num_points_1d: int = LANDSCAPE_POINTS_1D,
                   num_points_2d: int = LANDSCAPE_POINTS_2D) -> dict[str, np.ndarray]:
  """1-D and 2-D slices of the training loss (on `fixed_batch(FLATNESS_BATCH)`) around `params`.

  Directions are `flatness.filter_normalized_direction` draws from
  `split(key)`: the 1-D slice runs along the first, the 2-D grid along the
  first (alphas, rows) and the second (betas, columns), so the 2-D slice's
  beta = 0 column repeats the 1-D curve where the grids meet. Biases get no
  direction (Li et al.), unless no leaf has a filter (ndim >= 2; e.g. the
  quadratic task's weight vector): then every leaf is moved, rescaled to its norm.

  Args:
    task: the optimizee (`flatl2o.tasks.get`).
    params: the centre point, the optimizee parameters.
    key: PRNG key of the two directions.
    radius: the coefficients run over [-radius, radius], a positive number.
    num_points_1d: points of the 1-D slice, a positive integer (odd: 0 is one of them).
    num_points_2d: points per axis of the 2-D grid, a positive integer.

  Returns:
    NumPy arrays: "alphas" `[num_points_1d]` and "loss_1d" (same length),
    "alphas_2d" / "betas_2d" `[num_points_2d]` and "loss_2d"
    `[num_points_2d, num_points_2d]`.
  """
  _checks.positive_number("radius", radius)
  _checks.positive_int("num_points_1d", num_points_1d)
  _checks.positive_int("num_points_2d", num_points_2d)
  include_biases = not any(jnp.ndim(x) >= 2 for x in jax.tree.leaves(params))
  # NumPy grids: an odd count puts exactly 0 in the middle (float32 linspace misses it).
  alphas = np.linspace(-radius, radius, num_points_1d)
  grid = np.linspace(-radius, radius, num_points_2d)
  loss_1d, loss_2d = jax.device_get(_landscape(
      task, params, key, alphas.astype(np.float32), grid.astype(np.float32), include_biases))
  return {"alphas": alphas, "loss_1d": np.asarray(loss_1d, np.float64), "alphas_2d": grid,
          "betas_2d": grid.copy(), "loss_2d": np.asarray(loss_2d, np.float64)}


EXTRA_ARGS = ("loss", "grad_fn")


def accepted_extra_args(tx: optax.GradientTransformation) -> tuple[str, ...]:
  """Which of `EXTRA_ARGS` `tx.update` takes (all of them with `**extra_args`).

  Args:
    tx: an optax transformation.

  Returns:
    The names of `EXTRA_ARGS` ("loss", "grad_fn") that `tx.update`'s signature names, in that
    order; all of them when it takes `**kwargs`; none when its signature cannot be read.
  """
  try:
    params = inspect.signature(tx.update).parameters.values()
  except (TypeError, ValueError):
    return ()
  if any(p.kind is p.VAR_KEYWORD for p in params):
    return EXTRA_ARGS
  names = {p.name for p in params}
  return tuple(a for a in EXTRA_ARGS if a in names)


def accepts_loss(tx: optax.GradientTransformation) -> bool:
  """Whether `tx.update` takes a `loss=` keyword (or any extra keywords).

  Args:
    tx: an optax transformation.

  Returns:
    True when "loss" is among `accepted_extra_args(tx)`.
  """
  return "loss" in accepted_extra_args(tx)


def step_fn(task, tx: optax.GradientTransformation):
  """The pure training step `(params, opt_state, key) -> (params, opt_state, loss)`.

  A transformation that takes extra arguments gets `loss=` (the minibatch
  loss) and `grad_fn=` (`(params, key) -> gradient` on a minibatch drawn from
  `key`, for optimizers such as Entropy-SGD that need gradients elsewhere),
  each when its `update` accepts it.

  Args:
    task: the optimizee (`flatl2o.tasks.get`): its `loss` and `sample_batch` are used.
    tx: the optax transformation that updates the parameters.

  Returns:
    `step(params, opt_state, key)`: draws a minibatch from `key`, updates with `tx` and
    returns the new parameters, the new optimizer state and the minibatch loss before the
    update.
  """
  accepted = accepted_extra_args(tx)
  grad_fn = lambda p, k: jax.grad(task.loss)(p, task.sample_batch(k))

  def step(params, opt_state, key):
    batch = task.sample_batch(key)
    loss, grads = jax.value_and_grad(task.loss)(params, batch)
    extra = {"loss": loss, "grad_fn": grad_fn}
    updates, opt_state = tx.update(grads, opt_state, params,
                                   **{name: extra[name] for name in accepted})
    return optax.apply_updates(params, updates), opt_state, loss

  return step


class Learned(NamedTuple):
  """A learned optimizer given as its architecture and meta-parameters.

  `train(task, Learned(lopt, meta_params), ...)` trains like
  `train(task, lopt.transform(meta_params), ...)`, but the meta-parameters are
  an argument of the compiled chunk rather than constants inside it: every
  meta-parameter set of one architecture shares one compilation (meta-testing
  many trained optimizers costs one compile per architecture and task shape).
  """

  lopt: Any
  meta_params: Any

  def transform(self) -> optax.GradientTransformation:
    """The learned optimizer as an optax transformation.

    Returns:
      `lopt.transform(meta_params)`, with the meta-parameters as constants.
    """
    return self.lopt.transform(self.meta_params)


@functools.lru_cache(maxsize=64)
def chunk_runner(tx: optax.GradientTransformation):
  """The jitted `run_chunk(task, params, opt_state, data_key, first_step, length)` of `tx`.

  It scans `length` training steps from step `first_step`, drawing step t's
  batch from `fold_in(data_key, t)`, and returns `(params, opt_state, losses)`.
  One compiled runner per transformation (cached), shared by every seed and
  task of the same shapes; `train` runs it chunk by chunk, benchmarks time it.

  Args:
    tx: the optax transformation (hashable: it is the cache key).

  Returns:
    The jitted `run_chunk`, `length` static; `losses` is `[length]`, the minibatch loss of
    each step before its update.
  """
  return jax.jit(functools.partial(_run_chunk, lambda: tx), static_argnames="length")


@functools.lru_cache(maxsize=64)
def learned_chunk_runner(lopt):
  """`chunk_runner` of `lopt.transform(meta_params)` with `meta_params` as its first argument.

  `run_chunk(meta_params, task, params, opt_state, data_key, first_step, length)`:
  one compilation for every meta-parameter set of the architecture `lopt`.

  Args:
    lopt: the learned-optimizer architecture (hashable: it is the cache key).

  Returns:
    The jitted `run_chunk`, `length` static, returning `(params, opt_state, losses)` as
    `chunk_runner`'s does.
  """
  def run_chunk(meta_params, task, params, opt_state, data_key, first_step, length):
    return _run_chunk(lambda: lopt.transform(meta_params), task, params, opt_state, data_key,
                      first_step, length)
  return jax.jit(run_chunk, static_argnames="length")


def _run_chunk(make_tx, task, params, opt_state, data_key, first_step, length):
  step = step_fn(task, make_tx())

  def body(carry, t):
    params, opt_state = carry
    params, opt_state, loss = step(params, opt_state, jax.random.fold_in(data_key, t))
    return (params, opt_state), loss

  steps = first_step + jnp.arange(length)
  (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), steps)
  return params, opt_state, losses


def _evaluation_steps(num_steps: int, eval_every: int, flatness_at, keep_params_at):
  """`flatness_at` and `keep_params_at` sorted and checked against the evaluation grid."""
  _checks.positive_int("num_steps", num_steps)
  _checks.positive_int("eval_every", eval_every)
  flatness_at = sorted(set(flatness_at))
  keep_params_at = sorted(set(keep_params_at))
  for name, steps in (("flatness_at", flatness_at), ("keep_params_at", keep_params_at)):
    off_grid = [s for s in steps if s != num_steps and (s <= 0 or s % eval_every or s > num_steps)]
    if off_grid:
      raise ValueError(f"{name} steps {off_grid} are not evaluation steps; accepted: "
                       f"multiples of eval_every ({eval_every}) up to num_steps, or num_steps")
  return flatness_at, keep_params_at


def train(task, tx: optax.GradientTransformation, num_steps: int, key: jax.Array,
          eval_every: int = 100,
          eval_splits: Sequence[str] = ("validation", "test"),
          flatness_at: Sequence[int] = (),
          keep_params_at: Sequence[int] = ()) -> TrainResult:
  """Trains a fresh optimizee of `task` with `tx` for `num_steps` steps.

  Args:
    task: an optimizee from `flatl2o.tasks.get`.
    tx: any optax transformation, or a `Learned(lopt, meta_params)` (the same
      training, one compilation for every meta-parameter set of an architecture).
    num_steps: number of `update` calls.
    key: PRNG key; it decides the initialisation and the batch stream.
    eval_every: steps between full-split evaluations (also the compiled chunk).
    eval_splits: splits to evaluate at step 0, every `eval_every` and at the end.
    flatness_at: evaluation steps (multiples of `eval_every`, or `num_steps`) at
      which to also measure flatness; one run then serves several horizons.
    keep_params_at: evaluation steps (as for `flatness_at`) whose parameters
      to return in `params_at`, e.g. to measure a solution at a training loss
      known only after the run, without training it again.

  Returns:
    A `TrainResult`.
  """
  flatness_at, keep_params_at = _evaluation_steps(num_steps, eval_every, flatness_at,
                                                  keep_params_at)
  params_at = {}
  flatness_key = jax.random.fold_in(key, 0xF1A7)
  measures = {}
  start_time = time.perf_counter()
  init_key, data_key = jax.random.split(key)
  params = task.init(init_key)
  if isinstance(tx, Learned):
    run_chunk = functools.partial(learned_chunk_runner(tx.lopt), tx.meta_params)
    tx = tx.transform()
  else:
    run_chunk = chunk_runner(tx)
  opt_state = tx.init(params)

  eval_steps = [0]
  evals = [{s: task.evaluate(params, s) for s in eval_splits}]
  losses = []
  step = 0
  chunk_times = []
  while step < num_steps:
    length = min(eval_every, num_steps - step)
    chunk_start = time.perf_counter()
    params, opt_state, chunk_losses = run_chunk(task, params, opt_state, data_key,
                                                jnp.int32(step), length)
    losses.append(np.asarray(chunk_losses))  # blocks: the chunk's time is real
    chunk_times.append((time.perf_counter() - chunk_start, length))
    step += length
    eval_steps.append(step)
    evals.append({s: task.evaluate(params, s) for s in eval_splits})
    if step in flatness_at:
      measures[step] = flatness_measures(task, params, flatness_key)
    if step in keep_params_at:
      params_at[step] = params

  evals = jax.device_get(evals)
  metrics = {
      s: {m: np.asarray([e[s][m] for e in evals], np.float64) for m in evals[0][s]}
      for s in eval_splits
  }
  measures = {step: {k: float(v) for k, v in m.items()} for step, m in measures.items()}
  timed = chunk_times[1:]
  steps_per_second = (sum(n for _, n in timed) / sum(t for t, _ in timed)
                      if timed else float("nan"))
  return TrainResult(
      train_loss=np.concatenate(losses).astype(np.float64),
      eval_steps=np.asarray(eval_steps),
      metrics=metrics,
      params=params,
      wall_time_s=time.perf_counter() - start_time,
      steps_per_second=steps_per_second,
      flatness=measures,
      params_at=params_at)
