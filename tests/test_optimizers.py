"""Hand-designed optimizer registry and the evaluation loop."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

from flatl2o import evaluation, optimizers, tasks


class RegistryTest(parameterized.TestCase):

  @parameterized.parameters(*optimizers.names())
  def test_default_learning_rate_trains_mlp(self, name):
    task = tasks.get("mlp_sigmoid")
    result = evaluation.train(task, optimizers.get(name), 300, jax.random.key(0),
                              eval_every=300)
    self.assertGreater(result.final("test")["accuracy"], 0.8)

  def test_flat_minima_baselines_match_adam_within_300_steps(self):
    # SAM at 0.01 (half its calls are ascent steps) reached 0.928 here against Adam's
    # 0.947: more than the 0.01 allowed.
    task = tasks.get("mlp_sigmoid")
    accuracy = lambda name: evaluation.train(task, optimizers.get(name), 300, jax.random.key(1000),
                                             eval_every=300).final("test")["accuracy"]
    adam = accuracy("adam")
    for name in ("sam", "entropy_sgd"):
      self.assertGreaterEqual(accuracy(name), adam - 0.01, name)

  def test_names(self):
    self.assertSameElements(optimizers.names(), ["sgd", "momentum", "adam", "rmsprop", "adagrad",
                                                 "sam", "entropy_sgd"])

  def test_unknown_name(self):
    with self.assertRaisesRegex(optimizers.OptimizerError,
                                "unknown optimizer 'lion'; accepted: sgd, momentum, adam"):
      optimizers.get("lion")

  def test_unknown_hparam(self):
    with self.assertRaisesRegex(optimizers.OptimizerError,
                                "'sgd' takes no hyper-parameter 'beta'; accepted: learning_rate"):
      optimizers.get("sgd", beta=0.1)

  @parameterized.parameters(0.0, -1e-3, float("nan"), "0.1")
  def test_bad_learning_rate(self, lr):
    with self.assertRaisesRegex(optimizers.OptimizerError, "learning_rate must be a positive"):
      optimizers.get("adam", learning_rate=lr)

  def test_learning_rate_none_means_default(self):
    self.assertEqual(optimizers.default_hparams("adam")["learning_rate"], 0.01)
    params = {"w": jnp.ones(3)}
    tx = optimizers.get("sgd", learning_rate=None)
    updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.3 * np.ones(3), rtol=1e-6)


class EntropySGDTest(parameterized.TestCase):

  def test_needs_grad_fn_and_says_so(self):
    tx = optimizers.get("entropy_sgd")
    params = {"w": jnp.ones(3)}
    with self.assertRaisesRegex(ValueError, "entropy_sgd needs grad_fn="):
      tx.update(params, tx.init(params), params)
    with self.assertRaisesRegex(ValueError, "entropy_sgd needs grad_fn="):
      jax.jit(tx.update)(params, tx.init(params), params)

  def test_two_steps_match_a_hand_computation(self):
    # f(x) = a . x^2 / 2 with exact gradients and no noise: Algorithm 1 of
    # Chaudhari et al. by hand, gamma scoped between the two outer steps.
    a = np.array([1.0, 4.0, 0.5])
    hp = dict(learning_rate=0.7, gamma=0.5, scoping=0.1, num_langevin_steps=4,
              langevin_step_size=0.05, noise=0.0, mean_rate=0.75)
    tx = optimizers.get("entropy_sgd", **hp)
    grad_fn = lambda p, key: {"w": jnp.asarray(a, jnp.float32) * p["w"]}
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    state = tx.init(params)
    x = np.array([1.0, -2.0, 3.0])
    for t in range(2):
      updates, state = tx.update(None, state, params, grad_fn=grad_fn)
      params = optax.apply_updates(params, updates)
      gamma = 0.5 * 1.1**t
      xp, mu = x.copy(), x.copy()
      for _ in range(4):
        xp = xp - 0.05 * (a * xp + gamma * (xp - x))
        mu = 0.25 * mu + 0.75 * xp
      x = x - 0.7 * gamma * (x - mu)
      np.testing.assert_allclose(params["w"], x, rtol=1e-5)
    self.assertEqual(int(state.count), 2)

  def test_noise_comes_from_its_own_key(self):
    tx = optimizers.get("entropy_sgd", noise=1.0)
    params = {"w": jnp.zeros(4)}
    grad_fn = lambda p, key: jax.tree.map(jnp.zeros_like, p)
    state = tx.init(params)
    first, state = tx.update(None, state, params, grad_fn=grad_fn)
    second, _ = tx.update(None, state, params, grad_fn=grad_fn)
    self.assertGreater(float(jnp.abs(first["w"]).sum()), 0.0)
    self.assertFalse(np.allclose(first["w"], second["w"]))  # a fresh draw each step


def _loss_recorder():
  """A transformation whose update takes `loss=` and keeps the last one in its state."""

  def init(params):
    del params
    return jnp.float32(0)

  def update(updates, state, params=None, *, loss):
    del state, params
    return jax.tree.map(lambda g: -0.01 * g, updates), loss

  return optax.GradientTransformationExtraArgs(init, update)


class TrainLoopTest(parameterized.TestCase):

  def test_result_shapes(self):
    task = tasks.get("mlp_sigmoid")
    r = evaluation.train(task, optax.adam(1e-2), 250, jax.random.key(0), eval_every=100)
    self.assertEqual(r.train_loss.shape, (250,))
    np.testing.assert_array_equal(r.eval_steps, [0, 100, 200, 250])
    for split in ("validation", "test"):
      for metric in ("loss", "accuracy"):
        self.assertEqual(r.metrics[split][metric].shape, (4,))
    self.assertTrue(np.isfinite(r.steps_per_second))
    self.assertLess(r.train_loss[-20:].mean(), r.train_loss[:20].mean())

  def test_same_key_same_run_different_key_different_run(self):
    task = tasks.get("mlp_sigmoid")
    tx = optax.sgd(0.1)
    a = evaluation.train(task, tx, 50, jax.random.key(3), eval_every=50)
    b = evaluation.train(task, tx, 50, jax.random.key(3), eval_every=25)
    np.testing.assert_array_equal(a.train_loss, b.train_loss)  # chunking does not matter
    c = evaluation.train(task, tx, 50, jax.random.key(4), eval_every=50)
    self.assertFalse(np.array_equal(a.train_loss, c.train_loss))

  def test_loss_is_passed_to_transformations_that_take_it(self):
    task = tasks.get("quadratic")
    tx = _loss_recorder()
    self.assertTrue(evaluation.accepts_loss(tx))
    self.assertFalse(evaluation.accepts_loss(optimizers.get("sam")))
    key = jax.random.key(0)
    params = task.init(jax.random.split(key)[0])
    step = jax.jit(evaluation.step_fn(task, tx))
    _, state, loss = step(params, tx.init(params), key)
    self.assertEqual(float(state), float(loss))
    self.assertGreater(float(loss), 0.0)

  def test_flatness_at_several_steps_of_one_run(self):
    task = tasks.get("mlp_sigmoid")
    tx = optax.adam(1e-2)
    long = evaluation.train(task, tx, 60, jax.random.key(0), eval_every=20, flatness_at=(20, 60))
    short = evaluation.train(task, tx, 20, jax.random.key(0), eval_every=20, flatness_at=(20,))
    self.assertEqual(sorted(long.flatness), [20, 60])
    self.assertEqual(long.flatness[20], short.flatness[20])  # one run serves both horizons
    self.assertGreater(long.flatness[20]["hessian_trace"], 0.0)
    with self.assertRaisesRegex(ValueError, r"flatness_at steps \[30\] are not evaluation steps"):
      evaluation.train(task, tx, 60, jax.random.key(0), eval_every=20, flatness_at=(30,))

  def test_keep_params_at_returns_the_parameters_of_a_shorter_run(self):
    task = tasks.get("mlp_sigmoid")
    tx = optax.adam(1e-2)
    long = evaluation.train(task, tx, 60, jax.random.key(0), eval_every=20,
                            keep_params_at=(20, 40))
    short = evaluation.train(task, tx, 40, jax.random.key(0), eval_every=20)
    self.assertEqual(sorted(long.params_at), [20, 40])
    chex.assert_trees_all_equal(long.params_at[40], short.params)
    self.assertFalse(all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(long.params_at[20]), jax.tree.leaves(short.params))))
    with self.assertRaisesRegex(ValueError, r"keep_params_at steps \[30\] are not evaluation"):
      evaluation.train(task, tx, 60, jax.random.key(0), eval_every=20, keep_params_at=(30,))

  def test_bad_lengths(self):
    task = tasks.get("quadratic")
    with self.assertRaisesRegex(ValueError, "num_steps must be a positive integer"):
      evaluation.train(task, optax.sgd(0.1), 0, jax.random.key(0))
    with self.assertRaisesRegex(ValueError, "eval_every must be a positive integer"):
      evaluation.train(task, optax.sgd(0.1), 10, jax.random.key(0), eval_every=-1)

  def test_compiles_once_across_seeds(self):
    task = tasks.get("quadratic")
    tx = optax.sgd(0.05)
    for seed in range(3):
      evaluation.train(task, tx, 20, jax.random.key(seed), eval_every=20)
    chex.assert_equal(evaluation.chunk_runner(tx)._cache_size(), 1)

  def test_learned_trains_like_its_transformation_and_compiles_once(self):
    task = tasks.get("mlp_sigmoid", batch_size=32)
    lopt = optimizers.L2ODM()
    # The runner is cached per architecture: an earlier test in this process may have
    # compiled it for other shapes (or these); two meta-parameter sets add at most one.
    before = evaluation.learned_chunk_runner(lopt)._cache_size()
    for seed in (0, 1):  # two meta-parameter sets, one compilation
      meta_params = lopt.init(jax.random.key(seed))
      by_args = evaluation.train(task, evaluation.Learned(lopt, meta_params), 30,
                                 jax.random.key(7), eval_every=10)
      by_closure = evaluation.train(task, lopt.transform(meta_params), 30, jax.random.key(7),
                                    eval_every=10)
      np.testing.assert_allclose(by_args.train_loss, by_closure.train_loss, rtol=1e-5)
      chex.assert_trees_all_close(by_args.params, by_closure.params, rtol=1e-5, atol=1e-7)
    self.assertLessEqual(evaluation.learned_chunk_runner(lopt)._cache_size() - before, 1)


class L2OScaleLogLearningRateTest(parameterized.TestCase):
  """The log learning rate is clipped to `log_lr_range`: driven past either bound by a read-out
  bias, it stops there and the step is exp(bound) times the direction read-out."""

  @parameterized.parameters((+5.0, 0.0), (-5.0, -16.0))
  def test_driven_to_a_bound_it_stays_there(self, push, bound):
    from flatl2o.optimizers.l2o_scale import L2OScale  # pylint: disable=g-import-not-at-top
    lopt = L2OScale()
    meta_params = jax.tree.map(jnp.zeros_like, lopt.init(jax.random.key(0)))
    # Direction read-out 0.25, log-lr change `push` per step, whatever the hidden state.
    meta_params["out_b"] = jnp.array([[0.25], [push]], jnp.float32)
    state = lopt.init_state(3)
    grad = jnp.array([1.0, -2.0, 0.5], jnp.float32)
    for _ in range(6):  # log(1e-3) = -6.9: at most 2 steps of 5 to either bound
      update, state = lopt.step(meta_params, grad, state)
    np.testing.assert_array_equal(state.log_lr, np.full(3, bound, np.float32))
    np.testing.assert_allclose(update, np.full(3, 0.25 * np.exp(bound)), rtol=1e-6)


class PlotLimitsTest(absltest.TestCase):

  def test_accuracy_axis_ignores_the_untrained_start(self):
    from flatl2o import report  # pylint: disable=g-import-not-at-top
    lo, hi = report.zoomed_limits([np.array([[0.1, 0.95, 0.96], [0.12, 0.94, 0.97]]),
                                   np.array([[0.09, 0.955, 0.965]])])
    self.assertAlmostEqual(lo, 0.94 - 0.003)
    self.assertAlmostEqual(hi, 0.97 + 0.003)


if __name__ == "__main__":
  absltest.main()
