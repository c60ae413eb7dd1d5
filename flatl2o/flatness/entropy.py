"""Local entropy of a loss landscape, estimated with vmapped Langevin chains.

With the normalised Gaussian measure around x,

  F(x; gamma) = log E_{x' ~ N(x, I/gamma)} exp(-f(x'))
              = log int exp(-f(x') - gamma/2 ||x' - x||^2) dx' + const,

flat regions have high local entropy, and the flatness regularizer is -F.
Its gradient is

  grad(-F)(x) = gamma (x - mu),   mu = E_p[x'],  p(x') ~ exp(-f(x') - gamma/2 ||x' - x||^2).

`langevin_chains` runs K chains (vmapped) of L Langevin (SGLD) steps
(`lax.scan`) on U(x') = f(x') + gamma/2 ||x' - x||^2,

  x' <- x' - step_size * grad U(x') + noise * sqrt(2 step_size) * N(0, I),

starting at x, each with an exponential running mean mu <- (1 - rate) mu + rate x',
and returns every chain's final state and running mean (`LangevinChains`,
leaves with a leading [K] axis). `langevin_mean`, the estimate of mu, is the
mean over chains of the running means (Entropy-SGD's estimator). `noise` is the
temperature's square root; with noise = 1 the chains sample p exactly in the
small-step limit, with noise = 0 they descend to p's mode. `f` may take a PRNG
key for minibatch gradients (`stochastic=True`).

The chains are unadjusted (no Metropolis correction): on a Gaussian of
precision P (here P = A + gamma I for f = x^T A x / 2) and noise = 1 a chain's
stationary covariance is (P (I - step_size P / 2))^-1, not P^-1, so the step
size biases the spread of `samples` by a factor 1 / (1 - step_size P / 2) (and
step_size P < 2 is needed for the chains to stay bounded).

`local_entropy_gap` reports the value -F(x) - f(x) >= ... by Monte Carlo,
-log mean_j exp(-(f(x + e_j / sqrt(gamma)) - f(x))), e_j ~ N(0, I). It is 0
for a flat f and, at a minimum, approaches tr(H) / (2 gamma) for large gamma;
the log of a sample mean under-estimates the log of the mean (Jensen), so use
enough samples when gamma is small relative to the curvature.

On a quadratic f = x^T A x / 2 everything is known in closed form:
mu = gamma (A + gamma I)^-1 x, grad(-F) = gamma (A + gamma I)^-1 A x and
-F - f = 1/2 log det(I + A / gamma) - 1/2 g^T (A + gamma I)^-1 g with g = A x.

References:
  Chaudhari et al., "Entropy-SGD: biasing gradient descent into wide valleys",
  ICLR 2017. Yang et al., "Learning to generalize provably in learning to
  optimize", AISTATS 2023.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from flatl2o.flatness._checks import matmul_precision, positive_int, positive_number
from flatl2o.flatness.hessian import normal_like


def _check(num_chains, num_steps, gamma, step_size, noise, rate):
  positive_int("num_chains", num_chains)
  positive_int("num_steps", num_steps)
  if not isinstance(gamma, jax.Array):  # a traced schedule value is the caller's to check
    positive_number("gamma", gamma)
  positive_number("step_size", step_size)
  positive_number("noise", noise, allow_zero=True)
  if not isinstance(rate, (int, float)) or not 0 < rate <= 1:
    raise ValueError(f"mean_rate must lie in (0, 1], got {rate!r}")


class LangevinChains(NamedTuple):
  """Where K Langevin chains ended (`langevin_chains`).

  Attributes:
    samples: per chain, its final state x'_L; each leaf shaped like the
      params' with a leading `[num_chains]` axis.
    means: per chain, its exponential running mean mu (same shapes).
  """

  samples: Any
  means: Any


def langevin_chains(f: Callable[..., jax.Array] | None, params, key: jax.Array, *,
                    gamma: float | jax.Array, num_chains: int, num_steps: int,
                    step_size: float, noise: float, mean_rate: float = 0.25,
                    stochastic: bool = False,
                    grad_fn: Callable[[Any, jax.Array], Any] | None = None) -> LangevinChains:
  """Runs the chains of the module docstring from `params`; returns every chain's end.

  Chain c uses `split(key, num_chains)[c]`, its step l `split(that, num_steps)[l]`,
  which is split once more into the minibatch key (used when `stochastic` or
  with `grad_fn`) and the noise key (drawn with `normal_like`, one key per leaf).
  `grad_fn(x, key)`, when given, replaces `grad(f)`: the gradient at x on a
  minibatch drawn from `key` (Entropy-SGD's use; `f` may then be None). `gamma`
  may be a traced scalar (a schedule).

  Args:
    f: the loss, a scalar function of a pytree: `f(x)`, or `f(x, key)` (a minibatch drawn
      from `key`) when `stochastic`; may be None when `grad_fn` is given.
    params: the anchor x, a pytree of floating-point arrays; every chain starts there. It is
      held fixed (stop-gradient).
    key: PRNG key, split per chain and per step as above.
    gamma: the coupling strength of the Gaussian around `params` (its variance is 1/gamma per
      coordinate), a positive number or a traced scalar (a schedule; then not checked).
    num_chains: the number of chains K, a positive integer.
    num_steps: the number of Langevin steps L per chain, a positive integer.
    step_size: the Langevin step size, a positive number (it biases the chains' spread and
      must be small enough for them to stay bounded; see the module docstring).
    noise: the scale of the injected Gaussian noise, the square root of the temperature; a
      non-negative number (1: sample p in the small-step limit; 0: descend to its mode).
    mean_rate: the rate of each chain's exponential running mean, in (0, 1].
    stochastic: whether `f` takes a PRNG key (`f(x, key)`, for minibatch gradients); forced
      True when `grad_fn` is given.
    grad_fn: optional `(x, key) -> gradient` (a pytree shaped like `x`) used instead of
      `jax.grad(f)`.

  Returns:
    A `LangevinChains`: every chain's final state (`samples`) and running mean (`means`), each
    leaf shaped like the corresponding leaf of `params` with a leading `[num_chains]` axis.

  Raises:
    ValueError: both `f` and `grad_fn` are None, or an argument is out of the range above.
  """
  _check(num_chains, num_steps, gamma, step_size, noise, mean_rate)
  anchor = jax.lax.stop_gradient(params)
  if grad_fn is not None:
    grad_f, stochastic = grad_fn, True
  elif f is None:
    raise ValueError("langevin_chains needs a loss f or a grad_fn")
  else:
    grad_f = jax.grad(f)

  def chain(chain_key):
    def step(carry, k):
      x, mu = carry
      grad_key, noise_key = jax.random.split(k)
      g = grad_f(x, grad_key) if stochastic else grad_f(x)
      # Each leaf keeps its dtype: a traced float32 gamma would promote bf16 leaves.
      x = jax.tree.map(
          lambda x, g, a, e: (x - step_size * (g + gamma * (x - a))
                              + noise * jnp.sqrt(2.0 * step_size) * e).astype(x.dtype),
          x, g, anchor, normal_like(noise_key, x))
      mu = jax.tree.map(lambda m, x: ((1.0 - mean_rate) * m + mean_rate * x).astype(m.dtype),
                        mu, x)
      return (x, mu), None

    (x, mu), _ = jax.lax.scan(step, (anchor, anchor), jax.random.split(chain_key, num_steps))
    return LangevinChains(samples=x, means=mu)

  return jax.vmap(chain)(jax.random.split(key, num_chains))


def langevin_mean(f: Callable[..., jax.Array] | None, params, key: jax.Array, *,
                  gamma: float | jax.Array, num_chains: int = 4, num_steps: int = 5,
                  step_size: float = 0.1, noise: float = 1.0, mean_rate: float = 0.25,
                  stochastic: bool = False,
                  grad_fn: Callable[[Any, jax.Array], Any] | None = None):
  """Estimate of mu = E_p[x'] (see the module docstring), shaped like `params`.

  The mean over chains of `langevin_chains(...).means`.

  Args:
    f: the loss, a scalar function of a pytree: `f(x)`, or `f(x, key)` (a minibatch drawn
      from `key`) when `stochastic`; may be None when `grad_fn` is given.
    params: the anchor x, a pytree of floating-point arrays (held fixed).
    key: PRNG key for the chains (split as in `langevin_chains`).
    gamma: the coupling strength of the Gaussian around `params` (its variance is 1/gamma per
      coordinate), a positive number or a traced scalar (a schedule; then not checked).
    num_chains: the number of chains K, a positive integer (default 4).
    num_steps: the number of Langevin steps L per chain, a positive integer (default 5).
    step_size: the Langevin step size, a positive number (it biases the chains' spread and
      must be small enough for them to stay bounded; see the module docstring).
    noise: the scale of the injected Gaussian noise, the square root of the temperature; a
      non-negative number (1: sample p in the small-step limit; 0: descend to its mode).
    mean_rate: the rate of each chain's exponential running mean, in (0, 1].
    stochastic: whether `f` takes a PRNG key (`f(x, key)`, for minibatch gradients); forced
      True when `grad_fn` is given.
    grad_fn: optional `(x, key) -> gradient` used instead of `jax.grad(f)`.

  Returns:
    A pytree with the structure and shapes of `params`: the mean over the K chains of their
    running means.
  """
  chains = langevin_chains(f, params, key, gamma=gamma, num_chains=num_chains,
                           num_steps=num_steps, step_size=step_size, noise=noise,
                           mean_rate=mean_rate, stochastic=stochastic, grad_fn=grad_fn)
  return jax.tree.map(lambda m: jnp.mean(m, axis=0), chains.means)


def local_entropy_grad(f: Callable[..., jax.Array], params, key: jax.Array, *, gamma: float,
                       num_chains: int = 4, num_steps: int = 5, step_size: float = 0.1,
                       noise: float = 1.0, mean_rate: float = 0.25, stochastic: bool = False):
  """Estimate of grad(-F)(x) = gamma (x - mu): the local-entropy regularizer's gradient.

  mu is `langevin_mean` with the same arguments.

  Args:
    f: the loss, a scalar function of a pytree: `f(x)`, or `f(x, key)` when `stochastic`.
    params: the point x, a pytree of floating-point arrays.
    key: PRNG key for the Langevin chains.
    gamma: the coupling strength of the Gaussian around `params` (its variance is 1/gamma per
      coordinate), a positive number.
    num_chains: the number of chains K, a positive integer.
    num_steps: the number of Langevin steps L per chain, a positive integer.
    step_size: the Langevin step size, a positive number (it biases the chains' spread and
      must be small enough for them to stay bounded; see the module docstring).
    noise: the scale of the injected Gaussian noise, the square root of the temperature; a
      non-negative number (1: sample p in the small-step limit; 0: descend to its mode).
    mean_rate: the rate of each chain's exponential running mean, in (0, 1].
    stochastic: whether `f` takes a PRNG key (`f(x, key)`, for minibatch gradients).

  Returns:
    gamma (params - mu): a pytree with the structure and shapes of `params`.
  """
  mu = langevin_mean(f, params, key, gamma=gamma, num_chains=num_chains, num_steps=num_steps,
                     step_size=step_size, noise=noise, mean_rate=mean_rate, stochastic=stochastic)
  return jax.tree.map(lambda x, m: gamma * (x - m), params, mu)


def local_entropy_surrogate(params, mu, gamma: float) -> jax.Array:
  """gamma/2 ||x - sg(mu)||^2: a scalar whose gradient w.r.t. x is the estimator gamma (x - mu).

  Args:
    params: the point x, a pytree of arrays.
    mu: the estimate of mu (e.g. `langevin_mean`), a pytree with the structure and shapes of
      `params`; no gradient flows into it (sg: `jax.lax.stop_gradient`).
    gamma: the coupling strength.

  Returns:
    A scalar array: gamma/2 times the squared Euclidean distance between `params` and `mu`,
    summed over every leaf.
  """
  mu = jax.lax.stop_gradient(mu)
  return 0.5 * gamma * sum(jnp.sum((x - m) ** 2) for x, m in
                           zip(jax.tree.leaves(params), jax.tree.leaves(mu)))


def local_entropy_gap(f: Callable[[Any], jax.Array], params, key: jax.Array, *, gamma: float,
                      num_samples: int = 128, precision: str | None = "highest") -> jax.Array:
  """Monte-Carlo estimate of -F(x; gamma) - f(x) (0 for a flat f; larger is sharper).

  The estimate is -log mean_j exp(-(f(x + e_j / sqrt(gamma)) - f(x))), e_j ~ N(0, I) (see
  the module docstring); the `num_samples` evaluations run one after another (`lax.map`).

  Args:
    f: a scalar function of a pytree, `f(params) -> []` (e.g. the training loss on a fixed
      batch); it takes no key.
    params: the point x, a pytree of floating-point arrays.
    key: PRNG key; sample j draws e_j as `normal_like(jax.random.split(key, num_samples)[j],
      params)`.
    gamma: a positive number; perturbations have standard deviation 1/sqrt(gamma) per
      coordinate.
    num_samples: the number of Monte-Carlo samples, a positive integer.
    precision: the matmul precision of the evaluations of f (None: the caller's); default
      "highest".

  Returns:
    A scalar array: the estimate of -F(x; gamma) - f(x).

  Example:

  >>> import jax, jax.numpy as jnp
  >>> from flatl2o import flatness
  >>> f = lambda p: 0.5 * jnp.sum(p["x"] ** 2)
  >>> flat = flatness.local_entropy_gap(f, {"x": jnp.zeros(2)}, jax.random.key(0), gamma=100.0)
  >>> sharp = flatness.local_entropy_gap(lambda p: 100 * f(p), {"x": jnp.zeros(2)},
  ...                                    jax.random.key(0), gamma=100.0)
  >>> bool(0 < flat < sharp)  # a wider basin loses less free energy
  True
  """
  positive_int("num_samples", num_samples)
  positive_number("gamma", gamma)
  with matmul_precision(precision):
    f0 = f(params)

    def excess(k):
      shifted = jax.tree.map(lambda x, e: x + e / jnp.sqrt(gamma), params,
                             normal_like(k, params))
      return f(shifted) - f0

    deltas = jax.lax.map(excess, jax.random.split(key, num_samples))
    return -(jax.nn.logsumexp(-deltas) - jnp.log(num_samples))
