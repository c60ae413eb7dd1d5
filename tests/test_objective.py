"""The regularized meta-objective: gradients (vs finite differences), switches, collapse."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from flatl2o import data as flatl2o_data
from flatl2o import checkpoints, meta, optimizers, tasks
from flatl2o.meta import objective

TINY = dict(unroll_length=3, num_inner_steps=6, meta_batch_size=2)


def _cast(tree, dtype):
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _tiny_problem(regularizer, dtype=jnp.float32, second_order=False):
  """L2O-DM with 4 hidden units on a 3-input sigmoid MLP (143 parameters)."""
  x = np.asarray(jax.random.normal(jax.random.key(5), (40, 3)))
  y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5)
  data = flatl2o_data.from_arrays("tiny", (x, y), test=(x, y))
  data = data.replace(**{f"{s}_x": getattr(data, f"{s}_x").astype(dtype)
                         for s in ("train", "validation", "test")})
  task = tasks.get("mlp_sigmoid", data, batch_size=8)
  lopt = optimizers.L2ODM(hidden_size=4, num_layers=1)
  config = meta.MetaTrainConfig(regularizer=regularizer, second_order=second_order, **TINY)
  meta_params = jax.tree.map(lambda x: x.astype(dtype), lopt.init(jax.random.key(0)))
  states = _cast(meta.init_meta_batch(lopt, config, task, meta_params, jax.random.key(1)), dtype)
  loss = jax.jit(lambda t: meta.unroll(lopt, task, config, t, states, jax.random.key(2))[0])
  return loss, meta_params


class ObjectiveGradientTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("plain", meta.RegularizerConfig()),
      ("trace", meta.RegularizerConfig(kind="hessian", hessian_probes=2, alpha=10.0)),
      ("trace_in_inner_loss", meta.RegularizerConfig(kind="hessian", hessian_probes=2,
                                                     add_to_inner_loss=True)),
  )
  def test_meta_gradient_matches_finite_differences(self, regularizer):
    # Exact derivative of the meta-loss: second order (the first-order default
    # drops d(inner gradient)/d(meta_params) on purpose), in float64.
    with jax.enable_x64(True):
      loss, meta_params = _tiny_problem(regularizer, jnp.float64, second_order=True)
      grad = jax.grad(loss)(meta_params)
      chex.assert_tree_all_finite(grad)
      flat_grad = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grad)])
      direction = jax.tree.map(
          lambda x: jax.random.normal(jax.random.key(7), x.shape, jnp.float64), meta_params)
      flat_dir = np.concatenate([np.ravel(d) for d in jax.tree.leaves(direction)])
      eps = 1e-5
      plus = loss(jax.tree.map(lambda t, d: t + eps * d, meta_params, direction))
      minus = loss(jax.tree.map(lambda t, d: t - eps * d, meta_params, direction))
      numeric = float((plus - minus) / (2 * eps))
      analytic = float(flat_grad @ flat_dir)
      self.assertAlmostEqual(analytic, numeric, delta=1e-4 * max(1.0, abs(numeric)))

  @parameterized.named_parameters(
      ("eigenvalue", meta.RegularizerConfig(kind="hessian", hessian_estimator="eigenvalue")),
      ("lanczos", meta.RegularizerConfig(kind="hessian", hessian_estimator="lanczos")),
      ("entropy", meta.RegularizerConfig(kind="entropy", beta=5.0)),
      ("entropy_in_inner_loss", meta.RegularizerConfig(kind="entropy", add_to_inner_loss=True)),
  )
  @pytest.mark.slow  # one meta-gradient compilation per estimator; the FD tests pin the maths
  def test_estimator_meta_gradients_are_finite(self, regularizer):
    # These hold a stop-gradient quantity fixed by design (the eigenvector, the
    # Langevin mean mu), so their gradient is not the finite difference of the
    # estimate; it must be finite and differ from the plain one.
    plain, meta_params = _tiny_problem(meta.RegularizerConfig())
    loss, _ = _tiny_problem(regularizer)
    grad = jax.grad(loss)(meta_params)
    chex.assert_tree_all_finite(grad)
    diff = jax.tree.map(jnp.subtract, grad, jax.grad(plain)(meta_params))
    self.assertGreater(float(sum(jnp.sum(d**2) for d in jax.tree.leaves(diff))), 0.0)

  def test_regularizer_changes_the_meta_gradient(self):
    plain, meta_params = _tiny_problem(meta.RegularizerConfig())
    regularized, _ = _tiny_problem(meta.RegularizerConfig(kind="hessian", alpha=10.0))
    self.assertGreater(float(regularized(meta_params) - plain(meta_params)), 0.0)

  def test_trace_term_is_per_coordinate(self):
    # f = c/2 ||x||^2 has tr(H)/n = c whatever n is.
    for n in (3, 300):
      value = objective.term(meta.RegularizerConfig(kind="hessian", alpha=2.0),
                             lambda x: 0.5 * 3.0 * jnp.sum(x["w"] ** 2), {"w": jnp.ones(n)},
                             jax.random.key(0))
      self.assertAlmostEqual(float(value), 6.0, places=4)

  @parameterized.parameters(
      ("always", [1, 1, 1, 1]), ("first_half", [1, 1, 0, 0]), ("second_half", [0, 0, 1, 1]))
  def test_when(self, when, expected):
    config = meta.RegularizerConfig(kind="entropy", when=when)
    got = [float(objective.weight(config, jnp.int32(s), 200)) for s in (0, 80, 100, 180)]
    self.assertEqual(got, expected)

  def test_switched_off_half_adds_nothing(self):
    plain, meta_params = _tiny_problem(meta.RegularizerConfig())
    # The tiny problem's first truncation starts at step 0: 'second_half' is off there.
    off, _ = _tiny_problem(meta.RegularizerConfig(kind="hessian", when="second_half"))
    self.assertEqual(float(off(meta_params)), float(plain(meta_params)))

  def test_default_alpha_depends_on_estimator(self):
    self.assertEqual(meta.RegularizerConfig(kind="hessian").alpha, 1.0)
    self.assertEqual(meta.RegularizerConfig(kind="hessian", hessian_estimator="lanczos").alpha,
                     0.01)
    self.assertEqual(meta.RegularizerConfig(kind="hessian", alpha=0.5).alpha, 0.5)

  @parameterized.parameters(
      ({"alpha": 0.0}, "alpha must be a positive number"),
      ({"beta": -1.0}, "beta must be a positive number"),
      ({"entropy_gamma": 0.0}, "entropy_gamma must be a positive number"),
      ({"entropy_chains": 0}, "entropy_chains must be a positive integer"),
      ({"entropy_steps": -1}, "entropy_steps must be a positive integer"),
      ({"hessian_probes": 0}, "hessian_probes must be a positive integer"),
      ({"entropy_noise": -0.5}, "entropy_noise must be a non-negative number"),
      ({"kind": "sam"}, "unknown regularizer kind 'sam'; accepted: none, hessian, entropy"),
      ({"when": "sometimes"}, "accepted: always, first_half, second_half"),
  )
  def test_bad_config(self, kwargs, message):
    with self.assertRaisesRegex(ValueError, message):
      meta.RegularizerConfig(**kwargs)


class CollapseTest(absltest.TestCase):

  def test_too_large_a_coefficient_is_detected_and_exported_marked_collapsed(self):
    task = tasks.get("mlp_sigmoid", batch_size=32)
    run_dir = self.create_tempdir().full_path
    config = meta.MetaTrainConfig(
        unroll_length=5, num_inner_steps=20, meta_batch_size=2, num_meta_iterations=30,
        meta_learning_rate=1e-2, validation_every=10, validation_horizon=40, validation_seeds=2,
        regularizer=meta.RegularizerConfig(kind="hessian", hessian_estimator="eigenvalue",
                                           alpha=30.0, power_iters=5))
    result = meta.meta_train(optimizers.L2ODM(), task, config, run_dir=run_dir)
    self.assertTrue(result.collapsed)
    self.assertTrue(all(h["collapsed"] for h in result.history if "collapsed" in h))
    self.assertEqual(result.status, "collapsed")
    # Exported anyway (its best-scoring validation), marked so evaluate warns about it.
    export = __import__("os").path.join(run_dir, "optimizer")
    self.assertEqual(checkpoints.status(export), "collapsed")

  def test_collapsed_rule(self):
    self.assertTrue(meta.trainer.collapsed({"initial_train_loss": 2.3, "final_train_loss": 2.2}))
    self.assertFalse(meta.trainer.collapsed({"initial_train_loss": 2.3, "final_train_loss": 0.4}))
    self.assertTrue(meta.trainer.collapsed({"initial_train_loss": 2.3,
                                            "final_train_loss": float("nan")}))


if __name__ == "__main__":
  absltest.main()
