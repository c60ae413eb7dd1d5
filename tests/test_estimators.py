"""Meta-gradient estimators against closed forms (flatl2o.meta.estimators).

The known answer: a quadratic bowl `f(w) = sum_i a_i w_i^2 / 2` trained by
gradient descent whose one meta-parameter is the log learning rate. From a fixed
start `w_0`, `w_t = (1 - lr a)^t w_0`, so the whole episode's meta-loss
`L(theta) = mean_t f(w_t)` and its derivative in `theta = log lr` are closed forms
(NumPy, float64); the Gaussian-smoothed objective `E[L(theta + eps)]` and its
derivative come from Gauss-Hermite quadrature of those closed forms.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized
from flax import struct

from flatl2o import meta, optimizers, tasks
from flatl2o.meta import estimators
from flatl2o.optimizers import base

CURVATURE = np.array([0.5, 2.0, 8.0])
START = np.array([1.0, -1.0, 0.5])
THETA = float(np.log(0.05))


@dataclasses.dataclass(frozen=True)
class LearnedLR(base.LearnedOptimizer):
  """Gradient descent whose learning rate exp(log_lr) is the meta-parameter."""

  name = "test_learned_lr"
  coordinatewise = True
  initial_lr: float = 0.05

  def init(self, key):
    del key
    return {"log_lr": jnp.asarray(np.log(self.initial_lr), jnp.float32)}

  def init_state(self, num_coords):
    del num_coords
    return ()

  def step(self, meta_params, grad, state):
    return -jnp.exp(meta_params["log_lr"]) * grad, state

  def transform(self, meta_params):
    return base.coordinatewise_transform(self, meta_params)


@struct.dataclass
class Bowl:
  """`f(w) = sum_i a_i w_i^2 / 2` from a fixed start: no randomness but the estimator's."""

  curvature: jax.Array
  start: jax.Array

  def init(self, key):
    del key
    return {"w": self.start}

  def sample_batch(self, key):
    del key
    return jnp.zeros(())

  def loss(self, params, batch):
    del batch
    return 0.5 * jnp.sum(self.curvature * params["w"] ** 2)


def _bowl():
  return Bowl(jnp.asarray(CURVATURE, jnp.float32), jnp.asarray(START, jnp.float32))


def episode_loss(theta, steps, start=START):
  """`mean_{t < steps} f(w_t)` in closed form (float64)."""
  r = 1.0 - np.exp(theta) * CURVATURE
  t = np.arange(steps)[:, None]
  return np.mean(np.sum(0.5 * CURVATURE * start ** 2 * r ** (2 * t), axis=1))


def episode_grad(theta, steps, start=START):
  """d/dtheta of `episode_loss` in closed form."""
  lr = np.exp(theta)
  r = 1.0 - lr * CURVATURE
  t = np.arange(steps)[:, None]
  dr = -lr * CURVATURE  # d r / d theta
  return np.mean(np.sum(0.5 * CURVATURE * start ** 2 * 2 * t * r ** (2 * t - 1) * dr, axis=1))


def truncated_grad(theta, steps, unroll):
  """The mean over an episode's truncations of each one's gradient with its start held fixed."""
  r = 1.0 - np.exp(theta) * CURVATURE
  grads = [episode_grad(theta, unroll, START * r ** k) for k in range(0, steps, unroll)]
  return np.mean(grads)


def smoothed(fn, theta, std, nodes=40):
  """`E[fn(theta + eps)]`, eps ~ N(0, std^2), by Gauss-Hermite quadrature."""
  z, w = np.polynomial.hermite.hermgauss(nodes)
  return sum(wj * fn(theta + np.sqrt(2.0) * std * zj) for zj, wj in zip(z, w)) / np.sqrt(np.pi)


def _config(name, steps, unroll, **kwargs):
  return meta.MetaTrainConfig(estimator=name, num_inner_steps=steps, unroll_length=unroll,
                              meta_batch_size=1, num_devices=1, **kwargs).unroll_config()


def episode_estimates(name, steps, unroll, episodes, **kwargs):
  """The per-episode mean (over its truncations) of `name`'s estimate, one per episode."""
  est = estimators.get(name, LearnedLR(), _bowl(), _config(name, steps, unroll, **kwargs))
  meta_params = {"log_lr": jnp.float32(THETA)}

  @jax.jit
  def one_episode(key):
    init_key, steps_key = jax.random.split(key)
    state = est.init(meta_params, init_key)

    def truncation(state, key):
      _, grad, state, _ = est.estimate(meta_params, state, key)
      return state, grad["log_lr"]

    _, grads = jax.lax.scan(truncation, state, jax.random.split(steps_key, steps // unroll))
    return grads.mean()

  return np.asarray(jax.vmap(one_episode)(jax.random.split(jax.random.key(0), episodes)),
                    np.float64)


class ClosedFormTest(absltest.TestCase):
  """The closed forms themselves, against finite differences (so the rest can lean on them)."""

  def test_episode_grad_is_the_derivative_of_episode_loss(self):
    h = 1e-6
    fd = (episode_loss(THETA + h, 12) - episode_loss(THETA - h, 12)) / (2 * h)
    self.assertAlmostEqual(episode_grad(THETA, 12), fd, places=7)

  def test_truncated_differs_from_the_full_episode_here(self):
    # The bias the PES test must see: half of the full gradient or less.
    self.assertLess(abs(truncated_grad(THETA, 20, 2)), 0.5 * abs(episode_grad(THETA, 20)))


class TruncatedTest(absltest.TestCase):
  """With `second_order` (the inner gradients' own dependence on theta kept); the
  default first-order estimate treats them as constants and is another answer."""

  def test_one_truncation_per_episode_is_the_exact_episode_gradient(self):
    (got,) = episode_estimates("truncated", 20, 20, 1, second_order=True)
    np.testing.assert_allclose(got, episode_grad(THETA, 20), rtol=1e-4)

  def test_short_truncations_give_the_biased_truncated_gradient(self):
    (got,) = episode_estimates("truncated", 20, 2, 1, second_order=True)
    np.testing.assert_allclose(got, truncated_grad(THETA, 20, 2), rtol=1e-4)

  def test_first_order_is_not_the_episode_gradient(self):
    (got,) = episode_estimates("truncated", 20, 20, 1)
    self.assertGreater(abs(got - episode_grad(THETA, 20)), 0.1 * abs(episode_grad(THETA, 20)))


class EvolutionStrategiesTest(parameterized.TestCase):

  def test_pes_is_unbiased_over_the_episode_where_truncation_is_not(self):
    std = 0.05
    draws = episode_estimates("pes", 20, 2, episodes=400, es_std=std, es_pairs=64)
    mean, stderr = draws.mean(), draws.std(ddof=1) / np.sqrt(len(draws))
    target = smoothed(lambda t: episode_grad(t, 20), THETA, std)
    self.assertLess(abs(mean - target), 4 * stderr, (mean, target, stderr))
    self.assertLess(stderr, 0.05 * abs(target))  # precise enough to see the bias below
    truncated = truncated_grad(THETA, 20, 2)
    self.assertGreater(abs(truncated - target), 10 * stderr)

  def test_es_matches_finite_differences_of_the_smoothed_objective(self):
    std, steps, h = 0.1, 6, 1e-3
    draws = episode_estimates("es", steps, steps, episodes=400, es_std=std, es_pairs=64)
    mean, stderr = draws.mean(), draws.std(ddof=1) / np.sqrt(len(draws))
    smooth = lambda t: smoothed(lambda u: episode_loss(u, steps), t, std)
    fd = (smooth(THETA + h) - smooth(THETA - h)) / (2 * h)
    self.assertLess(abs(mean - fd), 4 * stderr, (mean, fd, stderr))
    self.assertLess(stderr, 0.05 * abs(fd))

  @parameterized.parameters("es", "pes")
  def test_antithetic_estimate_by_hand(self, name):
    """One truncation of one pair, against the formula computed from the two unrolls."""
    std = 0.1
    config = _config(name, 4, 2, es_std=std, es_pairs=1)
    est = estimators.get(name, LearnedLR(), _bowl(), config)
    meta_params = {"log_lr": jnp.float32(THETA)}
    state = est.init(meta_params, jax.random.key(0))
    key = jax.random.key(3)
    for _ in range(2 if name == "pes" else 1):  # PES: the second truncation uses xi = eps1 + eps2
      loss, grad, state, _ = est.estimate(meta_params, state, key)
    eps = jax.random.normal(jax.random.split(jax.random.fold_in(key, 0xE5), 1)[0], (1,)) * std
    eps = float(eps[0])
    if name == "es":
      plus = episode_loss(THETA + eps, 2)
      minus = episode_loss(THETA - eps, 2)
      expected = eps * (plus - minus) / (2 * std ** 2)
      self.assertAlmostEqual(float(loss), episode_loss(THETA, 2), places=5)
    else:
      # Both truncations drew the same eps (same key): the + run is at theta + eps
      # throughout, and xi = 2 eps.
      r = lambda t: 1.0 - np.exp(t) * CURVATURE
      plus = episode_loss(THETA + eps, 2, START * r(THETA + eps) ** 2)
      minus = episode_loss(THETA - eps, 2, START * r(THETA - eps) ** 2)
      expected = 2 * eps * (plus - minus) / (2 * std ** 2)
      np.testing.assert_allclose(np.asarray(state.noise_sum["log_lr"]), [2 * eps], rtol=1e-6)
    np.testing.assert_allclose(float(grad["log_lr"]), expected, rtol=2e-3)

  def test_pes_init_starts_every_run_fresh_with_zero_noise(self):
    est = estimators.get("pes", LearnedLR(), _bowl(), _config("pes", 4, 2, es_pairs=3))
    state = est.init({"log_lr": jnp.float32(THETA)}, jax.random.key(0))
    self.assertEqual(state.params["w"].shape, (6, 1, 3))  # 2N runs x meta-batch x coords
    np.testing.assert_array_equal(state.noise_sum["log_lr"], np.zeros(3))
    np.testing.assert_array_equal(state.params["w"][:, 0], np.broadcast_to(START, (6, 3)))


def _small(name, **kwargs):
  return meta.MetaTrainConfig(**{
      "estimator": name, "es_pairs": 2, "unroll_length": 2, "num_inner_steps": 4,
      "meta_batch_size": 2, "num_meta_iterations": 4, "validation_every": 2,
      "validation_horizon": 4, "validation_seeds": 1, "log_every": 1, "checkpoint_every": 1,
      **kwargs})


class MetaTrainWithEstimatorTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.task = tasks.get("quadratic", batch_size=8)

  @parameterized.parameters("pes", "es")
  @pytest.mark.slow  # meta-trains three times (whole, interrupted, resumed)
  def test_interrupted_run_resumes_to_the_same_meta_parameters(self, name):
    """PES's noise sums and runs are in the checkpoint: a resume repeats the run exactly."""
    lopt = optimizers.MLPLOpt(hidden_size=4)
    config = _small(name, regularizer=meta.RegularizerConfig(kind="hessian", hessian_probes=1))
    whole = meta.meta_train(lopt, self.task, config)
    run_dir = self.create_tempdir().full_path
    calls = iter([False, True])
    with self.assertRaises(meta.MetaTrainingInterrupted):
      meta.meta_train(lopt, self.task, config, run_dir=run_dir,
                      should_stop=lambda: next(calls, False))
    resumed = meta.meta_train(lopt, self.task, config, run_dir=run_dir)
    self.assertEqual(resumed.resumed_from, 2)
    for a, b in zip(jax.tree.leaves(whole.last_meta_params),
                    jax.tree.leaves(resumed.last_meta_params)):
      np.testing.assert_array_equal(a, b)
    self.assertEqual([r["meta_loss"] for r in whole.history][2:],
                     [r["meta_loss"] for r in resumed.history])

  def test_pes_checkpoint_holds_the_noise_sums(self):
    lopt = optimizers.MLPLOpt(hidden_size=4)
    run_dir = self.create_tempdir().full_path
    config = _small("pes", num_meta_iterations=1)
    meta.meta_train(lopt, self.task, config, run_dir=run_dir)
    run = meta.run_dir.RunDirectory(run_dir, meta.run_dir.describe(
        lopt, self.task, dataclasses.replace(config, num_devices=1)))
    meta_params = lopt.init(jax.random.key(0))
    template = meta.trainer.MetaTrainState(
        meta_params, meta.meta_optimizer(config).init(meta_params),
        meta.init_meta_batch(lopt, config, self.task, meta_params, jax.random.key(0)),
        {"meta_params": meta_params, "score": np.asarray(0, np.float32),
         "iteration": np.asarray(0, np.int32)},
        0, 0, 0, 0, {"index": 0, "best_score": 0.0}).to_checkpoint()
    restored = run.restore(template)
    run.close()
    noise = restored["states"].noise_sum
    self.assertTrue(any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(noise)))
    self.assertEqual(jax.tree.leaves(noise)[0].shape[0], 2)  # es_pairs

  @parameterized.parameters("pes", "es")
  def test_estimate_on_the_meta_batch_lowers_the_meta_loss(self, name):
    """A behavioural check beside the closed forms: LearnedLR's lr moves the right way."""
    est = estimators.get(name, LearnedLR(initial_lr=0.01), _bowl(),
                         _config(name, 8, 4, es_pairs=16, es_std=0.05))
    meta_params = {"log_lr": jnp.float32(np.log(0.01))}
    _, grad, _, _ = est.estimate(meta_params, est.init(meta_params, jax.random.key(0)),
                                 jax.random.key(1))
    self.assertLess(float(grad["log_lr"]), 0.0)  # a larger lr lowers the loss here


@estimators.register("test_central_difference")
@struct.dataclass
class CentralDifference(estimators.Base):
  """A user's estimator: one truncation's meta-loss differentiated by central differences in
  every meta-parameter at once (exact for the one meta-parameter of `LearnedLR`)."""

  def init(self, meta_params, key):
    return self.fresh(meta_params, key)

  def estimate(self, meta_params, state, key):
    h = 1e-3
    shifted = lambda d: jax.tree.map(lambda x: x + d, meta_params)
    up, _ = self.unroll(shifted(h), state, key)
    down, _ = self.unroll(shifted(-h), state, key)
    loss, (new_state, traces) = self.unroll(meta_params, state, key)
    grads = jax.tree.map(lambda x: jnp.full_like(x, (up - down) / (2 * h)), meta_params)
    return loss, grads, new_state, self.metrics(traces)


class RegistryTest(absltest.TestCase):

  def test_a_users_estimator_gives_the_episode_gradient(self):
    # Differences see the inner gradients' dependence on theta: the second-order answer.
    self.assertIn("test_central_difference", estimators.names())
    (got,) = episode_estimates("test_central_difference", 20, 20, 1)
    np.testing.assert_allclose(got, episode_grad(THETA, 20), rtol=1e-2)

  def test_built_ins_come_first_and_names_are_checked(self):
    self.assertEqual(estimators.names()[:3], ("truncated", "pes", "es"))
    self.assertEqual(meta.MetaTrainConfig(estimator="test_central_difference").estimator,
                     "test_central_difference")
    with self.assertRaisesRegex(ValueError, "'pes' is already registered"):
      estimators.register("pes")(CentralDifference)
    with self.assertRaisesRegex(ValueError, "lacks init, estimate"):
      estimators.register("test_incomplete")(type("Incomplete", (), {}))

class BadEstimatorInputTest(parameterized.TestCase):

  @parameterized.parameters(
      ({"estimator": "reinforce"}, "unknown estimator 'reinforce'; accepted: truncated, pes, es"
       ", test_central_difference"),
      ({"es_pairs": 0}, "es_pairs must be a positive integer"),
      ({"es_std": 0.0}, "es_std must be a positive"),
      ({"es_std": -1.0}, "es_std must be a positive"))
  def test_one_line(self, kwargs, message):
    with self.assertRaisesRegex(ValueError, message):
      meta.MetaTrainConfig(**kwargs)

  def test_get_unknown(self):
    with self.assertRaisesRegex(ValueError, "accepted: truncated, pes, es"):
      estimators.get("sgd", LearnedLR(), _bowl(), meta.MetaTrainConfig())


@pytest.mark.slow
class EveryArchitectureTest(parameterized.TestCase):
  """`--estimator=pes` / `es` meta-trains every registered learned architecture."""

  @parameterized.product(name=optimizers.learned_names(), estimator=("pes",))
  def test_meta_trains(self, name, estimator):
    lopt = optimizers.learned(name)
    task = tasks.get("mlp_sigmoid", "digits", batch_size=16)
    config = _small(estimator, num_meta_iterations=2, meta_loss=lopt.preferred_meta_loss)
    result = meta.meta_train(lopt, task, config)
    self.assertLen(result.history, 2)
    self.assertTrue(all(np.isfinite(r["meta_loss"]) for r in result.history))
    moved = any(np.any(np.asarray(a) != np.asarray(b)) for a, b in zip(
        jax.tree.leaves(result.last_meta_params), jax.tree.leaves(lopt.init(
            jax.random.fold_in(jax.random.key(0), 0x7E7A)))))
    self.assertTrue(moved)


if __name__ == "__main__":
  absltest.main()
