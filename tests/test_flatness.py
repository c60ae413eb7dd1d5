"""Flatness measures against exact answers: jax.hessian + eigh, and closed forms on quadratics."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from jax.flatten_util import ravel_pytree

from flatl2o import flatness

jax.config.update("jax_enable_x64", False)


def _small_mlp():
  """A 4-5-3 tanh MLP on fixed data, at a non-trivial point; 43 parameters."""
  k = jax.random.split(jax.random.key(0), 5)
  x = jax.random.normal(k[0], (32, 4))
  y = jax.random.randint(k[1], (32,), 0, 3)
  params = {"w1": jax.random.normal(k[2], (4, 5)) * 0.8, "b1": jnp.zeros(5) + 0.1,
            "w2": jax.random.normal(k[3], (5, 3)) * 0.8, "b2": jnp.zeros(3)}

  def loss(p):
    logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(32), y])

  return loss, params


def _exact_eigenvalues(f, params):
  flat, unravel = ravel_pytree(params)
  hessian = jax.hessian(lambda v: f(unravel(v)))(flat)
  return np.linalg.eigvalsh(np.asarray(hessian, np.float64))


def _quadratic(dim=6, gamma=None, seed=0):
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
  eig = np.linspace(1.0, 5.0, dim)
  a = (q * eig) @ q.T
  return jnp.asarray(a, jnp.float32), (lambda x: 0.5 * x @ jnp.asarray(a, jnp.float32) @ x)


class HessianTest(parameterized.TestCase):

  def test_hvp_matches_the_hessian(self):
    f, params = _small_mlp()
    flat, unravel = ravel_pytree(params)
    v = jax.random.normal(jax.random.key(1), flat.shape)
    expected = jax.hessian(lambda w: f(unravel(w)))(flat) @ v
    got = ravel_pytree(flatness.hvp(f, params, unravel(v)))[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

  def test_hutchinson_trace(self):
    f, params = _small_mlp()
    exact = _exact_eigenvalues(f, params).sum()
    estimate = float(jax.jit(lambda k: flatness.hessian_trace(f, params, k, num_probes=4000))(
        jax.random.key(2)))
    self.assertAlmostEqual(estimate, exact, delta=0.03 * abs(exact))

  def test_trace_probes_are_fresh_per_key(self):
    f, params = _small_mlp()
    a = flatness.hessian_trace(f, params, jax.random.key(0), num_probes=1)
    b = flatness.hessian_trace(f, params, jax.random.key(1), num_probes=1)
    self.assertNotEqual(float(a), float(b))

  def test_power_iteration_top_eigenvalue(self):
    f, params = _small_mlp()
    eig = _exact_eigenvalues(f, params)
    self.assertGreater(eig[-1], abs(eig[0]))  # the top one dominates in magnitude
    got = float(flatness.top_hessian_eigenvalue(f, params, jax.random.key(3), num_iters=300))
    self.assertAlmostEqual(got, eig[-1], delta=0.01 * eig[-1])

  def test_lanczos(self):
    f, params = _small_mlp()
    eig = _exact_eigenvalues(f, params)
    full = flatness.lanczos(f, params, jax.random.key(4), num_iters=100)  # capped at n = 43
    self.assertEqual(full.ritz_values.shape, (43,))
    self.assertAlmostEqual(float(full.top_eigenvalue), eig[-1], delta=1e-3 * eig[-1])
    self.assertAlmostEqual(float(full.bottom_eigenvalue), eig[0], delta=1e-3 * eig[-1])
    # The quadrature of the start vector z is exact: trace = z^T H z (one Hutchinson probe).
    flat, unravel = ravel_pytree(params)
    z = jax.random.rademacher(jax.random.key(4), flat.shape, jnp.float32)
    quad = float(z @ ravel_pytree(flatness.hvp(f, params, unravel(z)))[0])
    self.assertAlmostEqual(float(full.trace), quad, delta=1e-3 * abs(quad))
    short = flatness.lanczos(f, params, jax.random.key(4), num_iters=12)
    self.assertAlmostEqual(float(short.top_eigenvalue), eig[-1], delta=0.01 * eig[-1])
    top = float(flatness.lanczos_top_eigenvalue(f, params, jax.random.key(4), num_iters=12))
    self.assertAlmostEqual(top, eig[-1], delta=0.01 * eig[-1])

  def test_eigenvalue_gradient_is_hellmann_feynman(self):
    a, _ = _quadratic()
    # f(x; s) = s * x^T A x / 2 has top eigenvalue s * lambda_max; d/ds = lambda_max.
    grad = jax.grad(lambda s: flatness.top_hessian_eigenvalue(
        lambda x: 0.5 * s * x @ a @ x, jnp.ones(6), jax.random.key(0), num_iters=200))(2.0)
    self.assertAlmostEqual(float(grad), 5.0, places=3)

  @parameterized.parameters(("num_probes", 0), ("num_probes", -1), ("num_probes", 1.5))
  def test_bad_counts(self, name, value):
    f, params = _small_mlp()
    with self.assertRaisesRegex(ValueError, f"{name} must be a positive integer"):
      flatness.hessian_trace(f, params, jax.random.key(0), num_probes=value)


class LocalEntropyTest(parameterized.TestCase):

  @parameterized.parameters(0.5, 2.0, 10.0)
  def test_deterministic_chains_reach_the_closed_form(self, gamma):
    a, f = _quadratic()
    x = jnp.linspace(-1.0, 1.0, 6)
    expected = gamma * np.linalg.solve(np.asarray(a) + gamma * np.eye(6), np.asarray(a) @ x)
    got = flatness.local_entropy_grad(f, x, jax.random.key(0), gamma=gamma, num_chains=2,
                                      num_steps=2000, step_size=0.5 / (5.0 + gamma), noise=0.0,
                                      mean_rate=0.5)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)

  def test_noisy_chains_average_to_the_closed_form(self):
    a, f = _quadratic()
    gamma = 2.0
    x = jnp.linspace(-1.0, 1.0, 6)
    mu_exact = gamma * np.linalg.solve(np.asarray(a) + gamma * np.eye(6), np.asarray(x))
    # Burn in, then average: a small rate makes the running mean a long average.
    mu = flatness.langevin_mean(f, x, jax.random.key(1), gamma=gamma, num_chains=256,
                                num_steps=400, step_size=0.02, noise=1.0, mean_rate=0.01)
    # Posterior std per coordinate <= 1/sqrt(1 + gamma); 256 chains, correlated steps.
    np.testing.assert_allclose(mu, mu_exact, atol=0.05)

  def test_minibatch_gradients(self):
    a, _ = _quadratic()
    x = jnp.linspace(-1.0, 1.0, 6)
    # f(x, key) is an unbiased noisy version of x^T A x / 2 (noise in the gradient).
    noisy = lambda p, k: 0.5 * p @ a @ p + 0.1 * jax.random.normal(k, (6,)) @ p
    gamma = 2.0
    expected = gamma * np.linalg.solve(np.asarray(a) + gamma * np.eye(6), np.asarray(a) @ x)
    got = flatness.local_entropy_grad(noisy, x, jax.random.key(0), gamma=gamma, num_chains=64,
                                      num_steps=600, step_size=0.05, noise=0.0, mean_rate=0.02,
                                      stochastic=True)
    np.testing.assert_allclose(got, expected, atol=0.05)

  def test_gap_matches_closed_form_and_approaches_trace(self):
    a, f = _quadratic()
    eig = np.linalg.eigvalsh(np.asarray(a, np.float64))
    x = jnp.full(6, 0.3)
    for gamma in (5.0, 50.0):
      g = np.asarray(a) @ np.asarray(x)
      exact = 0.5 * np.sum(np.log1p(eig / gamma)) - 0.5 * g @ np.linalg.solve(
          np.asarray(a) + gamma * np.eye(6), g)
      got = float(flatness.local_entropy_gap(f, x, jax.random.key(0), gamma=gamma,
                                             num_samples=20000))
      self.assertAlmostEqual(got, exact, delta=0.05 * abs(exact) + 1e-3)
    # At the minimum, gamma * (-F - f) -> tr(A) / 2 as gamma grows.
    ratios = []
    for gamma in (10.0, 100.0, 1000.0):
      gap = float(flatness.local_entropy_gap(f, jnp.zeros(6), jax.random.key(1), gamma=gamma,
                                             num_samples=20000))
      ratios.append(gap / (eig.sum() / (2 * gamma)))
    self.assertLess(abs(ratios[-1] - 1.0), 0.02)
    self.assertLess(abs(ratios[-1] - 1.0), abs(ratios[0] - 1.0))

  def test_surrogate_gradient_is_the_estimator(self):
    x = {"w": jnp.arange(3.0)}
    mu = {"w": jnp.ones(3)}
    grad = jax.grad(lambda p: flatness.local_entropy_surrogate(p, mu, 4.0))(x)
    chex.assert_trees_all_close(grad, {"w": 4.0 * (jnp.arange(3.0) - 1.0)})

  @parameterized.parameters(
      ({"gamma": 0.0}, "gamma must be a positive number"),
      ({"gamma": -1.0}, "gamma must be a positive number"),
      ({"gamma": 1.0, "num_chains": 0}, "num_chains must be a positive integer"),
      ({"gamma": 1.0, "num_steps": -2}, "num_steps must be a positive integer"),
      ({"gamma": 1.0, "noise": -0.1}, "noise must be a non-negative number"),
      ({"gamma": 1.0, "step_size": 0.0}, "step_size must be a positive number"),
  )
  def test_bad_arguments(self, kwargs, message):
    with self.assertRaisesRegex(ValueError, message):
      flatness.local_entropy_grad(lambda x: jnp.sum(x**2), jnp.ones(2), jax.random.key(0),
                                  **kwargs)


if __name__ == "__main__":
  absltest.main()
