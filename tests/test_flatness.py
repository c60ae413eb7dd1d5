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

  def test_power_iteration_on_a_bf16_leaf(self):
    # Diagonal quadratic with a bf16 leaf: the eigenvector keeps each leaf's dtype.
    params = {"a": jnp.ones((3,), jnp.float32), "b": jnp.ones((2,), jnp.bfloat16)}
    scales = {"a": jnp.array([1.0, 2.0, 3.0]), "b": jnp.array([8.0, 0.5], jnp.bfloat16)}
    f = lambda p: 0.5 * sum(jnp.sum(s * x.astype(jnp.float32) ** 2)
                            for s, x in zip(jax.tree.leaves(scales), jax.tree.leaves(p)))
    got = float(flatness.top_hessian_eigenvalue(f, params, jax.random.key(0), num_iters=50))
    self.assertAlmostEqual(got, 8.0, delta=0.05)

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


# A separable quadratic on a two-leaf pytree: f(x) = 1/2 sum_leaves sum c * x^2.
_CURVATURE = {"a": np.array([1.0, 2.0, 0.5]), "b": np.array([[3.0, 0.2], [1.0, 4.0]])}
_ANCHOR = {"a": np.array([0.5, -1.0, 2.0]), "b": np.array([[1.0, -0.5], [0.3, 2.0]])}


def _tree_quadratic(x):
  return 0.5 * sum(jnp.sum(c * x[k] ** 2) for k, c in _CURVATURE.items())


def _noisy_tree_quadratic(x, key):
  """`_tree_quadratic` plus a key-dependent linear term: its gradient adds N(0, I) to leaf a."""
  return _tree_quadratic(x) + jax.random.normal(key, (3,)) @ x["a"]


def _hand_chains(key, *, gamma, num_chains, num_steps, step_size, noise, rate, stochastic):
  """Langevin chains on `_tree_quadratic` in float64 NumPy, drawing the code's random numbers.

  The documented derivation: chain c uses split(key, K)[c], its step l
  split(that, L)[l], split again into (minibatch key, noise key); the noise of
  leaf i (in leaf order, 'a' then 'b') comes from split(noise key, 2)[i].
  """
  samples, means = [], []
  for chain_key in jax.random.split(key, num_chains):
    x = {k: v.copy() for k, v in _ANCHOR.items()}
    mu = {k: v.copy() for k, v in _ANCHOR.items()}
    for step_key in jax.random.split(chain_key, num_steps):
      grad_key, noise_key = jax.random.split(step_key)
      leaf_keys = jax.random.split(noise_key, 2)
      for i, k in enumerate(("a", "b")):
        grad = _CURVATURE[k] * x[k]
        if stochastic and k == "a":
          grad = grad + np.asarray(jax.random.normal(grad_key, (3,)), np.float64)
        eps = np.asarray(jax.random.normal(leaf_keys[i], x[k].shape, jnp.float32), np.float64)
        x[k] = (x[k] - step_size * (grad + gamma * (x[k] - _ANCHOR[k]))
                + noise * np.sqrt(2 * step_size) * eps)
        mu[k] = (1 - rate) * mu[k] + rate * x[k]
    samples.append(x)
    means.append(mu)
  stack = lambda trees: {k: np.stack([t[k] for t in trees]) for k in ("a", "b")}
  return stack(samples), stack(means)


class LangevinChainsTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("noiseless", 0.0, False),
      ("noisy", 0.7, False),
      ("noisy_minibatch_gradients", 0.7, True),
  )
  def test_chains_match_hand_computed_steps(self, noise, stochastic):
    """Catches: the running mean's weights swapped; the pull towards the anchor dropped;
    the noise scaled by sqrt(h) instead of sqrt(2h); the minibatch and noise keys
    swapped; one noise key shared by all leaves; the chains not averaged; the
    running means returned as the samples; one step fewer.
    """
    settings = dict(gamma=1.5, num_chains=3, num_steps=3, step_size=0.1, noise=noise)
    key = jax.random.key(42)
    f = _noisy_tree_quadratic if stochastic else _tree_quadratic
    anchor = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), _ANCHOR)
    chains = flatness.langevin_chains(f, anchor, key, mean_rate=0.3, stochastic=stochastic,
                                      **settings)
    mean = flatness.langevin_mean(f, anchor, key, mean_rate=0.3, stochastic=stochastic,
                                  **settings)
    samples, means = _hand_chains(key, rate=0.3, stochastic=stochastic, **settings)
    self.assertIsInstance(chains, flatness.LangevinChains)
    for k in ("a", "b"):
      self.assertEqual(chains.samples[k].shape, (3,) + _ANCHOR[k].shape)
      np.testing.assert_allclose(chains.samples[k], samples[k], rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(chains.means[k], means[k], rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(mean[k], means[k].mean(axis=0), rtol=1e-5, atol=1e-6)
    if noise:  # the chains differ, so averaging them is what is checked
      self.assertGreater(np.ptp(samples["a"][:, 0]), 0.1)

  @parameterized.parameters(1.0, 4.0)
  def test_sample_variance_is_the_ula_stationary_variance(self, gamma):
    """Spread and centre of 4000 chains on f = ||x||^2 / 2 with noise 1, after burn-in.

    p(x') ~ exp(-f(x') - gamma/2 ||x' - x||^2) is N(gamma x / (1 + gamma), 1 / (1 + gamma));
    an unadjusted chain with step h on precision P = 1 + gamma has stationary mean
    gamma x / P exactly and variance exactly 1 / (P (1 - h P / 2)). With h P = 0.3
    the latter is 18% above the target's, so the tight check tells them apart.
    Catches: noise sqrt(h) instead of sqrt(2h); gamma (x' - x) replaced by gamma x';
    the running means returned as the samples; langevin_mean of one chain only.
    """
    dim, num_chains = 8, 4000
    precision = 1.0 + gamma
    h = 0.3 / precision
    x = jnp.linspace(-1.0, 1.0, dim)
    # 100 steps: the start's offset has shrunk by 0.7^100, i.e. the chains are burnt in.
    chains = jax.jit(lambda k: flatness.langevin_chains(
        lambda v: 0.5 * jnp.sum(v ** 2), x, k, gamma=gamma, num_chains=num_chains,
        num_steps=100, step_size=h, noise=1.0))(jax.random.key(10 + int(gamma)))
    samples = np.asarray(chains.samples, np.float64)
    self.assertEqual(samples.shape, (num_chains, dim))
    ula_variance = 1.0 / (precision * (1.0 - h * precision / 2))
    variance = samples.var(axis=0, ddof=1).mean()  # coordinates are independent: pool them
    # The pooled variance of 32000 Gaussian draws has a relative sd of sqrt(2/32000) = 0.8%.
    self.assertAlmostEqual(variance, ula_variance, delta=0.04 * ula_variance)
    self.assertAlmostEqual(variance, 1.0 / precision, delta=0.25 / precision)
    centre = gamma * np.asarray(x) / precision
    sd_of_mean = np.sqrt(ula_variance / num_chains)
    np.testing.assert_allclose(samples.mean(axis=0), centre, atol=5 * sd_of_mean)
    mean = flatness.langevin_mean(lambda v: 0.5 * jnp.sum(v ** 2), x, jax.random.key(20),
                                  gamma=gamma, num_chains=num_chains, num_steps=100,
                                  step_size=h, noise=1.0)
    np.testing.assert_allclose(mean, centre, atol=5 * sd_of_mean)


class PrecisionTest(parameterized.TestCase):
  """Each measure's matmuls run at its `precision` (HIGHEST by default), even inside jit."""

  _A = jnp.linspace(-1.0, 1.0, 16).reshape(4, 4)

  def _lowered(self, measure, **kwargs):
    f = lambda p: jnp.sum(jnp.tanh(self._A @ p["w"]))
    params = {"w": jnp.ones(4)}
    return jax.jit(lambda p: measure(f, p, jax.random.key(0), **kwargs)).lower(params).as_text()

  @parameterized.named_parameters(
      ("trace", flatness.hessian_trace, {"num_probes": 2}),
      ("power", flatness.top_hessian_eigenvalue, {"num_iters": 2}),
      ("lanczos", lambda *a, **k: flatness.lanczos(*a, **k).top_eigenvalue, {"num_iters": 2}),
      ("lanczos_top", flatness.lanczos_top_eigenvalue, {"num_iters": 2}),
      ("entropy_gap", flatness.local_entropy_gap, {"gamma": 10.0, "num_samples": 2}),
  )
  def test_precision(self, measure, kwargs):
    dots = lambda text: [l for l in text.splitlines() if "dot_general" in l]
    highest = dots(self._lowered(measure, **kwargs))
    self.assertNotEmpty(highest)
    self.assertTrue(all("precision = [HIGHEST, HIGHEST]" in l for l in highest), highest[0])
    inherited = dots(self._lowered(measure, precision=None, **kwargs))
    self.assertFalse(any("HIGHEST" in l for l in inherited), inherited[0])
    with self.assertRaisesRegex(ValueError, "unknown precision 'exact'; accepted: None, highest"):
      self._lowered(measure, precision="exact", **kwargs)


if __name__ == "__main__":
  absltest.main()
