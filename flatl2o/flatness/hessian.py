"""Curvature of any scalar function of a pytree, from Hessian-vector products.

  hvp(f, x, v) = d/de grad f(x + e v) |_{e=0}     (forward-over-reverse: jvp of grad)

- `rademacher_like`, `normal_like`: random pytrees shaped and typed like the
  params (+-1 probes, N(0, 1) start vectors and noise), one key per leaf.
- `hessian_trace`: Hutchinson's estimator, tr(H) ~ mean_i z_i^T H z_i with
  Rademacher probes z_i drawn afresh from the key, all probes in one `vmap`.
- `top_hessian_eigenvalue`: power iteration; returns the Rayleigh quotient
  v^T H v at the final (stop-gradient) vector, so its gradient w.r.t. x is
  v^T (dH/dx) v, the derivative of the eigenvalue for a converged v.
- Every estimator takes `precision` (default "highest"): the matmul precision
  of its Hessian-vector products, so a figure does not depend on the GPU's
  TF32 default; None inherits the caller's.
- `lanczos`: Ritz values (and their SLQ weights) of H from an m-step Lanczos run with full
  re-orthogonalisation; the extreme Ritz values approximate the extreme
  eigenvalues, and stochastic Lanczos quadrature gives a (one-probe) trace
  estimate as a by-product.

Nothing here knows about the rest of flatl2o. Example:
  >>> f = lambda p: task.loss(p, batch)
  >>> tr = hessian_trace(f, params, jax.random.key(0), num_probes=16)

References:
  Hutchinson, "A stochastic estimator of the trace of the influence matrix",
  1989. Ubaru, Chen and Saad, "Fast estimation of tr(f(A)) via stochastic
  Lanczos quadrature", SIAM J. Matrix Anal. Appl. 2017. Yang et al., "Learning
  to generalize provably in learning to optimize", AISTATS 2023.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from flatl2o.flatness._checks import matmul_precision, positive_int

Fn = Callable[[Any], jax.Array]


def _vdot(a, b) -> jax.Array:
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def hvp(f: Fn, params, v):
  """Hessian-vector product H(params) v, as a pytree shaped like `params`.

  Computed forward-over-reverse (`jax.jvp` of `jax.grad(f)`), without forming H.

  Args:
    f: a scalar function of a pytree, `f(params) -> []` (e.g. the training loss on a fixed
      batch), twice differentiable with JAX.
    params: the point x at which H is taken, a pytree of floating-point arrays.
    v: the vector, a pytree with the structure, shapes and dtypes of `params`.

  Returns:
    H(params) v: a pytree with the structure, shapes and dtypes of `params`.
  """
  return jax.jvp(jax.grad(f), (params,), (v,))[1]


def _random_like(sample, key: jax.Array, tree):
  """`sample(key_i, shape, dtype)` per leaf of `tree`, key_i = split(key, #leaves)[i]."""
  leaves, treedef = jax.tree.flatten(tree)
  # max(., 1): split(key, 0) is an error, and an empty tree must still work.
  keys = jax.random.split(key, max(len(leaves), 1))
  return jax.tree.unflatten(treedef, [
      sample(k, jnp.shape(x), jnp.result_type(x)) for k, x in zip(keys, leaves)])


def rademacher_like(key: jax.Array, params):
  """A pytree of independent +-1 entries shaped (and typed) like `params`.

  Args:
    key: PRNG key; leaf i (in `jax.tree.leaves` order) draws from
      `jax.random.split(key, num_leaves)[i]`.
    params: a pytree of arrays, or anything with `jnp.shape` and `jnp.result_type` per leaf.

  Returns:
    A pytree with the structure, shapes and dtypes of `params`, each entry -1 or +1 with
    probability 1/2 (Hutchinson's probes).
  """
  return _random_like(jax.random.rademacher, key, params)


def normal_like(key: jax.Array, tree):
  """A pytree of independent N(0, 1) entries shaped (and typed) like `tree`.

  Leaf i is drawn from `jax.random.split(key, num_leaves)[i]` (in
  `jax.tree.leaves` order), so a fixed key gives fixed draws: results computed
  from it (e.g. printed tables) repeat digit for digit.

  Args:
    key: PRNG key, split once per leaf as above.
    tree: a pytree of floating-point arrays (or anything with `jnp.shape` and
      `jnp.result_type` per leaf).

  Returns:
    A pytree with the structure, shapes and dtypes of `tree`, of independent standard-normal
    entries.
  """
  return _random_like(jax.random.normal, key, tree)


def hessian_trace(f: Fn, params, key: jax.Array, num_probes: int = 10,
                  precision: str | None = "highest") -> jax.Array:
  """Hutchinson estimate of tr(H); unbiased, variance shrinking as 1/num_probes.

  H is the Hessian of `f` at `params`; the estimate is mean_i z_i^T H z_i over
  Rademacher probes z_i, all Hessian-vector products in one `vmap`.

  Args:
    f: a scalar function of a pytree, `f(params) -> []` (e.g. the training loss on a fixed
      batch), twice differentiable with JAX.
    params: the point at which H is taken, a pytree of floating-point arrays.
    key: PRNG key; probe i is `rademacher_like(jax.random.split(key, num_probes)[i], params)`.
    num_probes: the number of probes, a positive integer.
    precision: the matmul precision of the Hessian-vector products (None: the caller's; see
      `_checks.matmul_precision`); default "highest".

  Returns:
    A scalar array: the estimate of tr(H). Differentiable w.r.t. `params`.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> from flatl2o import flatness
  >>> f = lambda p: 0.5 * jnp.sum(jnp.array([1.0, 2.0, 3.0]) * p["x"] ** 2)  # H = diag(1, 2, 3)
  >>> float(flatness.hessian_trace(f, {"x": jnp.ones(3)}, jax.random.key(0), num_probes=4))
  6.0
  """
  positive_int("num_probes", num_probes)
  with matmul_precision(precision):
    probes = jax.vmap(lambda k: rademacher_like(k, params))(jax.random.split(key, num_probes))
    quad = jax.vmap(lambda z: _vdot(z, hvp(f, params, z)))(probes)
    return jnp.mean(quad)


def _normalize(v):
  norm = jnp.sqrt(_vdot(v, v))
  # Cast back: a bf16 leaf divided by the f32 norm would become f32, and the
  # next hvp needs tangents of the primal's dtype.
  return jax.tree.map(lambda x: (x / jnp.maximum(norm, 1e-30)).astype(x.dtype), v)


def top_hessian_eigenvalue(f: Fn, params, key: jax.Array, num_iters: int = 20,
                           precision: str | None = "highest") -> jax.Array:
  """Largest-magnitude eigenvalue of H by power iteration (the top one near a minimum).

  Args:
    f: a scalar function of a pytree, `f(params) -> []` (e.g. the training loss on a fixed
      batch), twice differentiable with JAX.
    params: the point at which H is taken, a pytree of floating-point arrays.
    key: PRNG key drawing the start vector (`normal_like(key, params)`, normalised).
    num_iters: the number of power-iteration steps (Hessian-vector products), a positive
      integer.
    precision: the matmul precision of the Hessian-vector products, one of "highest" (default:
      float32 matmuls stay float32 on GPUs), "float32", "high", "tensorfloat32", "default",
      "bfloat16", "fastest"; None: the caller's (see `_checks.matmul_precision`).

  Returns:
    A scalar array: the Rayleigh quotient v^T H v at the final unit vector v, which keeps its
    sign (negative if the largest-magnitude eigenvalue is). v is held fixed (stop-gradient), so
    the gradient w.r.t. `params` is v^T (dH/dx) v, the eigenvalue's derivative for a converged
    v.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> from flatl2o import flatness
  >>> f = lambda p: 0.5 * jnp.sum(jnp.array([1.0, 2.0, 3.0]) * p["x"] ** 2)  # H = diag(1, 2, 3)
  >>> round(float(flatness.top_hessian_eigenvalue(f, {"x": jnp.ones(3)}, jax.random.key(0),
  ...                                             num_iters=50)), 3)
  3.0
  """
  positive_int("num_iters", num_iters)
  with matmul_precision(precision):
    return _power_iteration(f, params, key, num_iters)


def _power_iteration(f: Fn, params, key: jax.Array, num_iters: int) -> jax.Array:
  v = _normalize(normal_like(key, params))
  frozen = jax.lax.stop_gradient(params)
  v, _ = jax.lax.scan(lambda v, _: (_normalize(hvp(f, frozen, v)), None), v, None,
                      length=num_iters)
  v = jax.lax.stop_gradient(v)
  return _vdot(v, hvp(f, params, v))


class LanczosResult(NamedTuple):
  """What an m-step Lanczos run tells about H.

  Attributes:
    ritz_values: `[m]` eigenvalues of the tridiagonal matrix T, ascending.
    top_eigenvalue: largest Ritz value (approximates the largest eigenvalue).
    bottom_eigenvalue: smallest Ritz value.
    trace: stochastic Lanczos quadrature estimate of tr(H) from the Rademacher
      start vector z: n * sum_k tau_k^2 theta_k (tau_k: first entries of T's
      eigenvectors). For tr(H) itself the quadrature equals z^T H z, so this is
      a one-probe Hutchinson estimate: average it over keys, or use
      `hessian_trace`, when the trace matters.
    top_vector: unit Ritz vector of `top_eigenvalue`, shaped like the params.
    ritz_weights: `[m]` quadrature weights tau_k^2 of `ritz_values` (they sum
      to 1): the start vector's spectral measure, sum_k tau_k^2 delta(t -
      theta_k), approximates H's eigenvalue density (SLQ, Ubaru et al. 2017).
      A Ritz value of a run that broke down early (an invariant subspace) has
      weight 0.
  """

  ritz_values: jax.Array
  top_eigenvalue: jax.Array
  bottom_eigenvalue: jax.Array
  trace: jax.Array
  top_vector: Any
  ritz_weights: jax.Array


def lanczos(f: Fn, params, key: jax.Array, num_iters: int = 20,
            precision: str | None = "highest") -> LanczosResult:
  """Lanczos on H with full re-orthogonalisation; `num_iters` is capped at the dimension.

  The run works on the flattened parameters (`ravel_pytree`), its Lanczos vectors in float32,
  with `params` held
  fixed (stop-gradient): nothing in the result is differentiable w.r.t. `params` (use
  `lanczos_top_eigenvalue` for that).

  Args:
    f: a scalar function of a pytree, `f(params) -> []` (e.g. the training loss on a fixed
      batch), twice differentiable with JAX.
    params: the point at which H is taken, a pytree of floating-point arrays (n entries in
      all).
    key: PRNG key drawing the start vector: n Rademacher entries, scaled to unit norm.
    num_iters: the number of Lanczos steps m, a positive integer; capped at n.
    precision: the matmul precision of the Hessian-vector products, one of "highest" (default:
      float32 matmuls stay float32 on GPUs), "float32", "high", "tensorfloat32", "default",
      "bfloat16", "fastest"; None: the caller's (see `_checks.matmul_precision`).

  Returns:
    A `LanczosResult`: the `[m]` Ritz values and their quadrature weights, the top and bottom
    Ritz values, the one-probe SLQ trace estimate, and the unit top Ritz vector shaped like
    `params`.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> from flatl2o import flatness
  >>> f = lambda p: 0.5 * jnp.sum(jnp.array([1.0, 2.0, 3.0]) * p["x"] ** 2)  # H = diag(1, 2, 3)
  >>> result = flatness.lanczos(f, {"x": jnp.ones(3)}, jax.random.key(0), num_iters=3)
  >>> [round(float(v), 3) for v in sorted(result.ritz_values)]
  [1.0, 2.0, 3.0]
  """
  positive_int("num_iters", num_iters)
  with matmul_precision(precision):
    return _lanczos(f, params, key, num_iters)


def _lanczos(f: Fn, params, key: jax.Array, num_iters: int) -> LanczosResult:
  flat, unravel = ravel_pytree(params)
  n = flat.shape[0]
  m = min(num_iters, n)
  frozen = jax.lax.stop_gradient(params)
  matvec = lambda x: ravel_pytree(hvp(f, frozen, unravel(x.astype(flat.dtype))))[0]

  start = jax.random.rademacher(key, (n,), jnp.float32)
  basis = jnp.zeros((m, n), jnp.float32).at[0].set(start / jnp.sqrt(n))
  alphas = jnp.zeros((m,), jnp.float32)
  betas = jnp.zeros((m,), jnp.float32)  # betas[i] couples vectors i-1 and i

  def body(i, carry):
    basis, alphas, betas = carry
    w = matvec(basis[i]).astype(jnp.float32)
    alpha = jnp.dot(w, basis[i])
    # Full re-orthogonalisation against every vector so far (twice is enough).
    mask = (jnp.arange(m) <= i)[:, None]
    for _ in range(2):
      w = w - (basis * mask).T @ ((basis * mask) @ w)
    beta = jnp.linalg.norm(w)
    nxt = jnp.where(beta > 1e-6 * jnp.abs(alpha) + 1e-30, w / jnp.maximum(beta, 1e-30), 0.0)
    basis = jnp.where(i + 1 < m, basis.at[jnp.minimum(i + 1, m - 1)].set(nxt), basis)
    # The last step has no next vector: leave betas[m - 1] (its coupling to step m - 2) be.
    betas = jnp.where(i + 1 < m, betas.at[jnp.minimum(i + 1, m - 1)].set(beta), betas)
    return basis, alphas.at[i].set(alpha), betas

  basis, alphas, betas = jax.lax.fori_loop(0, m, body, (basis, alphas, betas))
  tridiagonal = jnp.diag(alphas) + jnp.diag(betas[1:], 1) + jnp.diag(betas[1:], -1)
  theta, vectors = jnp.linalg.eigh(tridiagonal)
  weights = vectors[0] ** 2
  trace = n * jnp.sum(weights * theta)
  top_vector = unravel((vectors[:, -1] @ basis).astype(flat.dtype))
  return LanczosResult(ritz_values=theta, top_eigenvalue=theta[-1], bottom_eigenvalue=theta[0],
                       trace=trace, top_vector=top_vector, ritz_weights=weights)


def lanczos_top_eigenvalue(f: Fn, params, key: jax.Array, num_iters: int = 20,
                           precision: str | None = "highest") -> jax.Array:
  """Top eigenvalue from Lanczos, differentiable like `top_hessian_eigenvalue`.

  Args:
    f: a scalar function of a pytree, `f(params) -> []` (e.g. the training loss on a fixed
      batch), twice differentiable with JAX.
    params: the point at which H is taken, a pytree of floating-point arrays.
    key: PRNG key drawing the Lanczos start vector (as in `lanczos`).
    num_iters: the number of Lanczos steps, a positive integer; capped at the dimension.
    precision: the matmul precision of the Hessian-vector products, one of "highest" (default:
      float32 matmuls stay float32 on GPUs), "float32", "high", "tensorfloat32", "default",
      "bfloat16", "fastest"; None: the caller's (see `_checks.matmul_precision`).

  Returns:
    A scalar array: v^T H v at the top Ritz vector v of `lanczos(f, params, key, num_iters)`
    (the largest Ritz value, recomputed so that it has a gradient). v is held fixed
    (stop-gradient), so the gradient w.r.t. `params` is v^T (dH/dx) v.
  """
  with matmul_precision(precision):
    v = jax.lax.stop_gradient(lanczos(f, params, key, num_iters, precision=None).top_vector)
    return _vdot(v, hvp(f, params, v))
