"""Loss-landscape slices along filter-normalised random directions, and the Hessian spectrum.

Method (Li et al. 2018): draw a Gaussian direction d shaped like the params x
and rescale each *filter* of d to the norm of the same filter of x,

  d_{l,j} <- d_{l,j} / ||d_{l,j}|| * ||x_{l,j}||,

where a filter is a slice along a leaf's LAST axis (an output unit: a column of
a Dense kernel [in, out], a [h, w, in, j] slab of a Conv kernel [h, w, in, out]).
The rescaling removes the scale invariance of ReLU-like networks, so slices of
different solutions compare. Biases and other leaves with ndim <= 1 get a zero
direction (as Li et al. do), or with `include_biases=True` are rescaled as a
whole to the leaf's norm. Then

  loss_slice_1d: f(x + a d)            for each a in alphas      -> [A]
  loss_slice_2d: f(x + a d1 + b d2)    for each (a, b)           -> [A, B]

both vmapped over the coefficients (or `lax.map`ped in chunks of `chunk_size`,
to bound memory), so they trace once and run under `jax.jit`.

`hessian_spectrum`: stochastic Lanczos quadrature (Ubaru et al. 2017; Ghorbani
et al. 2019) from `hessian.lanczos`: the Ritz values theta_k and weights
tau_k^2 of `num_probes` runs, whose weighted sum of Gaussians approximates the
eigenvalue density of H (`flatl2o.report.plot_spectrum` draws it).

Like the rest of the flatness package it imports nothing else from flatl2o
(only `flatness._checks` and, for the spectrum, `flatness.hessian.lanczos`). Example:
  >>> f = lambda p: task.loss(p, batch)
  >>> d = filter_normalized_direction(jax.random.key(0), params)
  >>> losses = loss_slice_1d(f, params, d, jnp.linspace(-1.0, 1.0, 41))

References:
  Li, Xu, Taylor, Studer and Goldstein, "Visualizing the Loss Landscape of
  Neural Nets", NeurIPS 2018 (filter normalisation). Ghorbani, Krishnan and
  Xiao, "An Investigation into Neural Net Optimization via Hessian Eigenvalue
  Density", ICML 2019.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flatl2o.flatness._checks import matmul_precision, positive_int
from flatl2o.flatness.hessian import lanczos

Fn = Callable[[Any], jax.Array]

_EPS = 1e-10  # Li et al.'s guard against a zero random filter


def _leaf_names(tree) -> list[str]:
  return [jax.tree_util.keystr(path) or "<root>"
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _check_floating(params) -> None:
  for name, leaf in zip(_leaf_names(params), jax.tree.leaves(params)):
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise ValueError(f"params leaf {name} has dtype {jnp.result_type(leaf)}; "
                       "directions need floating-point leaves")


def _rescaled(key: jax.Array, x: jax.Array, include_biases: bool) -> jax.Array:
  dtype = jnp.result_type(x)
  x32 = jnp.asarray(x, jnp.float32)
  if x32.ndim <= 1 and not include_biases:
    return jnp.zeros(jnp.shape(x), dtype)
  d = jax.random.normal(key, jnp.shape(x), jnp.float32)
  axes = tuple(range(x32.ndim - 1)) if x32.ndim >= 2 else None  # per filter, or whole leaf
  norm = lambda v: jnp.sqrt(jnp.sum(v * v, axis=axes, keepdims=axes is not None))
  return (d * (norm(x32) / (norm(d) + _EPS))).astype(dtype)


def filter_normalized_direction(key: jax.Array, params, include_biases: bool = False):
  """A Gaussian direction shaped like `params`, each filter rescaled to the params' filter norm.

  Args:
    key: PRNG key; leaf i (in `jax.tree.leaves` order) draws from
      `jax.random.split(key, num_leaves)[i]`, whether or not it is zeroed, so
      `include_biases` does not change the kernels' directions.
    params: a pytree of floating-point arrays.
    include_biases: rescale leaves with ndim <= 1 as a whole to the leaf's norm
      instead of zeroing them.

  Returns:
    A pytree of `params`' structure, shapes and dtypes.
  """
  _check_floating(params)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, max(len(leaves), 1))
  return jax.tree.unflatten(treedef, [_rescaled(k, x, include_biases)
                                      for k, x in zip(keys, leaves)])


def _check_direction(name: str, params, direction) -> None:
  p_paths = _leaf_names(params)
  d_paths = _leaf_names(direction)
  if p_paths != d_paths or jax.tree.structure(params) != jax.tree.structure(direction):
    missing = [p for p in p_paths if p not in d_paths]
    extra = [p for p in d_paths if p not in p_paths]
    detail = (f"leaf {missing[0]} is missing" if missing else
              f"leaf {extra[0]} is not in params" if extra else
              f"its leaves are {d_paths}, params' are {p_paths}")
    raise ValueError(f"{name} does not have the tree structure of params: {detail}")
  for path, p, d in zip(p_paths, jax.tree.leaves(params), jax.tree.leaves(direction)):
    if jnp.shape(p) != jnp.shape(d):
      raise ValueError(f"{name} leaf {path} has shape {tuple(jnp.shape(d))}, "
                       f"params' has {tuple(jnp.shape(p))}")


def _check_coefficients(name: str, values) -> jax.Array:
  shape = jnp.shape(values)
  if len(shape) != 1 or shape[0] == 0:
    raise ValueError(f"{name} must be a non-empty 1-D array, got shape {tuple(shape)}")
  if not isinstance(values, jax.core.Tracer):  # a traced array is checked by its caller
    host = np.asarray(values)
    if not np.issubdtype(host.dtype, np.number) or not np.all(np.isfinite(host)):
      raise ValueError(f"{name} must be finite numbers, got {host.tolist()}")
  return jnp.asarray(values, jnp.float32)


def _losses_along(f: Fn, params, directions: tuple, coefficients: jax.Array,
                  chunk_size: int | None) -> jax.Array:
  """f(params + sum_i c_i directions_i) for each row c of `coefficients` [K, len(directions)]."""

  def at(c):
    def move(p, *ds):
      shifted = jnp.asarray(p, jnp.float32) + sum(c[i] * jnp.asarray(d, jnp.float32)
                                                  for i, d in enumerate(ds))
      return shifted.astype(jnp.result_type(p))
    return f(jax.tree.map(move, params, *directions))

  if chunk_size is None:
    return jax.vmap(at)(coefficients)
  return jax.lax.map(at, coefficients, batch_size=chunk_size)


def loss_slice_1d(f: Fn, params, direction, alphas, chunk_size: int | None = None,
                  precision: str | None = "highest") -> jax.Array:
  """`[len(alphas)]` values f(params + a * direction), a in `alphas`.

  Args:
    f: a scalar function of the params (e.g. the training loss on a fixed batch).
    params: the centre point.
    direction: a pytree shaped like `params` (e.g. `filter_normalized_direction`).
    alphas: 1-D finite coefficients.
    chunk_size: None evaluates every alpha in one vmap; an integer evaluates
      `chunk_size` at a time (`lax.map`), bounding memory on big models.
    precision: matmul precision inside `f` (default "highest", as the other
      measures; None: the caller's).

  Returns:
    A `[len(alphas)]` array: entry i is f(params + alphas[i] * direction), each leaf moved in
    float32 and cast back to its dtype.
  """
  _check_direction("direction", params, direction)
  alphas = _check_coefficients("alphas", alphas)
  if chunk_size is not None:
    positive_int("chunk_size", chunk_size)
  with matmul_precision(precision):
    return _losses_along(f, params, (direction,), alphas[:, None], chunk_size)


def loss_slice_2d(f: Fn, params, d1, d2, alphas, betas, chunk_size: int | None = None,
                  precision: str | None = "highest") -> jax.Array:
  """`[len(alphas), len(betas)]` values f(params + a * d1 + b * d2); row i is alphas[i].

  Arguments as `loss_slice_1d`; `d1` goes with `alphas`, `d2` with `betas`.

  Args:
    f: a scalar function of the params (e.g. the training loss on a fixed batch).
    params: the centre point.
    d1: the first direction, a pytree shaped like `params` (e.g.
      `filter_normalized_direction`), scaled by `alphas` (rows).
    d2: the second direction, shaped like `params`, scaled by `betas` (columns).
    alphas: 1-D finite coefficients of `d1`.
    betas: 1-D finite coefficients of `d2`.
    chunk_size: None evaluates every grid point in one vmap; an integer evaluates
      `chunk_size` at a time (`lax.map`), bounding memory on big models.
    precision: matmul precision inside `f` (default "highest"; None: the caller's).

  Returns:
    A `[len(alphas), len(betas)]` array: entry (i, j) is
    f(params + alphas[i] * d1 + betas[j] * d2).
  """
  _check_direction("d1", params, d1)
  _check_direction("d2", params, d2)
  alphas = _check_coefficients("alphas", alphas)
  betas = _check_coefficients("betas", betas)
  if chunk_size is not None:
    positive_int("chunk_size", chunk_size)
  grid_a, grid_b = jnp.meshgrid(alphas, betas, indexing="ij")
  coefficients = jnp.stack([grid_a.ravel(), grid_b.ravel()], axis=1)
  with matmul_precision(precision):
    values = _losses_along(f, params, (d1, d2), coefficients, chunk_size)
  return values.reshape(alphas.shape[0], betas.shape[0])


class HessianSpectrum(NamedTuple):
  """Stochastic Lanczos quadrature nodes of H: density(t) ~ sum_k weights_k delta(t - ritz_k).

  Attributes:
    ritz_values: `[num_probes * m]` Ritz values, probe after probe (m = Lanczos
      steps, capped at the dimension).
    weights: `[num_probes * m]` their weights tau_k^2 / num_probes (sum 1).
  """

  ritz_values: jax.Array
  weights: jax.Array


def hessian_spectrum(f: Fn, params, key: jax.Array, num_iters: int = 50, num_probes: int = 1,
                     precision: str | None = "highest") -> HessianSpectrum:
  """SLQ nodes of H's eigenvalue density from `num_probes` Lanczos runs of `num_iters` steps.

  Probe i runs `hessian.lanczos` from `jax.random.split(key, num_probes)[i]`;
  the runs go one after another (`lax.map`), so memory is that of one run.

  Args:
    f: a scalar function of a pytree, `f(params) -> []` (e.g. the training loss on a fixed
      batch), twice differentiable with JAX.
    params: the point at which H is taken, a pytree of floating-point arrays.
    key: PRNG key, split into one Lanczos start-vector key per probe.
    num_iters: Lanczos steps m per probe, a positive integer (capped at the dimension).
    num_probes: the number of Lanczos runs (random start vectors), a positive integer.
    precision: matmul precision of the Hessian-vector products (default "highest"; None: the
      caller's).

  Returns:
    A `HessianSpectrum`: `[num_probes * m]` Ritz values, probe after probe, and their weights
    tau_k^2 / num_probes (summing to 1).
  """
  positive_int("num_iters", num_iters)
  positive_int("num_probes", num_probes)
  with matmul_precision(precision):
    def probe(k):
      result = lanczos(f, params, k, num_iters, precision=None)
      return result.ritz_values, result.ritz_weights

    ritz, weights = jax.lax.map(probe, jax.random.split(key, num_probes))
  return HessianSpectrum(ritz_values=ritz.ravel(), weights=weights.ravel() / num_probes)
