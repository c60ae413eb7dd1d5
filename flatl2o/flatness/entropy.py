"""Local entropy of a loss landscape, estimated with vmapped Langevin chains.

With the normalised Gaussian measure around x,

  F(x; gamma) = log E_{x' ~ N(x, I/gamma)} exp(-f(x'))
              = log int exp(-f(x') - gamma/2 ||x' - x||^2) dx' + const,

flat regions have high local entropy, and the flatness regularizer is -F.
Its gradient is

  grad(-F)(x) = gamma (x - mu),   mu = E_p[x'],  p(x') ~ exp(-f(x') - gamma/2 ||x' - x||^2).

`langevin_mean` estimates mu with K chains (vmapped) of L Langevin (SGLD) steps
(`lax.scan`) on U(x') = f(x') + gamma/2 ||x' - x||^2,

  x' <- x' - step_size * grad U(x') + noise * sqrt(2 step_size) * N(0, I),

starting at x, and an exponential running mean mu <- (1 - rate) mu + rate x'
per chain, averaged over chains (Entropy-SGD's estimator). `noise` is the
temperature's square root; with noise = 1 the chains sample p exactly in the
small-step limit, with noise = 0 they descend to p's mode. `f` may take a PRNG
key for minibatch gradients (`stochastic=True`).

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

from typing import Any, Callable

import jax
import jax.numpy as jnp

from flatl2o.flatness._checks import positive_int, positive_number


def _check(num_chains, num_steps, gamma, step_size, noise, rate):
  positive_int("num_chains", num_chains)
  positive_int("num_steps", num_steps)
  positive_number("gamma", gamma)
  positive_number("step_size", step_size)
  positive_number("noise", noise, allow_zero=True)
  if not isinstance(rate, (int, float)) or not 0 < rate <= 1:
    raise ValueError(f"mean_rate must lie in (0, 1], got {rate!r}")


def langevin_mean(f: Callable[..., jax.Array], params, key: jax.Array, *, gamma: float,
                  num_chains: int = 4, num_steps: int = 5, step_size: float = 0.1,
                  noise: float = 1.0, mean_rate: float = 0.25, stochastic: bool = False):
  """Estimate of mu = E_p[x'] (see the module docstring), shaped like `params`."""
  _check(num_chains, num_steps, gamma, step_size, noise, mean_rate)
  anchor = jax.lax.stop_gradient(params)
  grad_f = jax.grad(f)

  def chain(chain_key):
    def step(carry, k):
      x, mu = carry
      grad_key, noise_key = jax.random.split(k)
      g = grad_f(x, grad_key) if stochastic else grad_f(x)
      leaves, treedef = jax.tree.flatten(x)
      noise_keys = jax.random.split(noise_key, max(len(leaves), 1))
      eps = jax.tree.unflatten(treedef, [jax.random.normal(nk, jnp.shape(l), jnp.result_type(l))
                                         for nk, l in zip(noise_keys, leaves)])
      x = jax.tree.map(
          lambda x, g, a, e: x - step_size * (g + gamma * (x - a))
          + noise * jnp.sqrt(2.0 * step_size) * e, x, g, anchor, eps)
      mu = jax.tree.map(lambda m, x: (1.0 - mean_rate) * m + mean_rate * x, mu, x)
      return (x, mu), None

    (_, mu), _ = jax.lax.scan(step, (anchor, anchor), jax.random.split(chain_key, num_steps))
    return mu

  mus = jax.vmap(chain)(jax.random.split(key, num_chains))
  return jax.tree.map(lambda m: jnp.mean(m, axis=0), mus)


def local_entropy_grad(f: Callable[..., jax.Array], params, key: jax.Array, *, gamma: float,
                       num_chains: int = 4, num_steps: int = 5, step_size: float = 0.1,
                       noise: float = 1.0, mean_rate: float = 0.25, stochastic: bool = False):
  """Estimate of grad(-F)(x) = gamma (x - mu): the local-entropy regularizer's gradient."""
  mu = langevin_mean(f, params, key, gamma=gamma, num_chains=num_chains, num_steps=num_steps,
                     step_size=step_size, noise=noise, mean_rate=mean_rate, stochastic=stochastic)
  return jax.tree.map(lambda x, m: gamma * (x - m), params, mu)


def local_entropy_surrogate(params, mu, gamma: float) -> jax.Array:
  """gamma/2 ||x - sg(mu)||^2: a scalar whose gradient w.r.t. x is the estimator gamma (x - mu)."""
  mu = jax.lax.stop_gradient(mu)
  return 0.5 * gamma * sum(jnp.sum((x - m) ** 2) for x, m in
                           zip(jax.tree.leaves(params), jax.tree.leaves(mu)))


def local_entropy_gap(f: Callable[[Any], jax.Array], params, key: jax.Array, *, gamma: float,
                      num_samples: int = 128) -> jax.Array:
  """Monte-Carlo estimate of -F(x; gamma) - f(x) (0 for a flat f; larger is sharper)."""
  positive_int("num_samples", num_samples)
  positive_number("gamma", gamma)
  f0 = f(params)
  leaves, treedef = jax.tree.flatten(params)

  def excess(k):
    keys = jax.random.split(k, max(len(leaves), 1))
    shifted = jax.tree.unflatten(treedef, [
        x + jax.random.normal(kk, jnp.shape(x), jnp.result_type(x)) / jnp.sqrt(gamma)
        for kk, x in zip(keys, leaves)])
    return f(shifted) - f0

  deltas = jax.lax.map(excess, jax.random.split(key, num_samples))
  return -(jax.nn.logsumexp(-deltas) - jnp.log(num_samples))
