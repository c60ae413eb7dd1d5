"""Optimizees: shapes, losses, a few training steps, and inputs that do not fit."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

from flatl2o import data, evaluation, tasks

EXPECTED_PARAMS = {  # on digits: 8x8x1 inputs, 10 classes
    "mlp_sigmoid": 64 * 20 + 20 + 20 * 10 + 10,
    "mlp_relu": 64 * 20 + 20 + 20 * 10 + 10,
    "mlp_deep": 64 * 20 + 20 + 20 * 20 + 20 + 20 * 10 + 10,
    "conv": 3 * 3 * 16 + 16 + 5 * 5 * 16 * 32 + 32 + 2 * 2 * 32 * 10 + 10,
    "quadratic": 20,
}


class TaskTest(parameterized.TestCase):

  def test_names(self):
    self.assertSameElements(tasks.names(), EXPECTED_PARAMS)

  @parameterized.parameters(*EXPECTED_PARAMS)
  def test_every_task_follows_the_protocol(self, name):
    task = tasks.get(name, batch_size=16)
    self.assertIsInstance(task, tasks.Task)
    self.assertEqual(task.name, name)
    self.assertEqual(task.dataset_name, "quadratic" if name == "quadratic" else "digits")
    self.assertSameElements(task.evaluate(task.init(jax.random.key(0)), "validation"),
                            task.metric_names)

  @parameterized.parameters(*EXPECTED_PARAMS)
  def test_shapes_loss_and_evaluate(self, name):
    task = tasks.get(name, batch_size=32)
    params = task.init(jax.random.key(0))
    self.assertEqual(sum(x.size for x in jax.tree.leaves(params)), EXPECTED_PARAMS[name])
    chex.assert_trees_all_equal_dtypes(params, jax.tree.map(lambda x: jnp.zeros((), jnp.float32), params))
    inputs, targets = task.sample_batch(jax.random.key(1))
    self.assertEqual(inputs.shape[0], 32)
    self.assertEqual(targets.shape, (32,))
    loss = task.loss(params, (inputs, targets))
    chex.assert_shape(loss, ())
    chex.assert_tree_all_finite(loss)
    metrics = task.evaluate(params, "validation")
    self.assertSameElements(metrics, task.metric_names)
    chex.assert_tree_all_finite(metrics)

  @parameterized.parameters(*EXPECTED_PARAMS)
  def test_a_few_adam_steps_lower_the_loss(self, name):
    task = tasks.get(name)
    result = evaluation.train(task, optax.adam(1e-2), 60, jax.random.key(0), eval_every=60)
    self.assertLess(result.metrics["validation"]["loss"][-1],
                    0.8 * result.metrics["validation"]["loss"][0])

  def test_init_is_seeded(self):
    task = tasks.get("mlp_sigmoid")
    a, b = task.init(jax.random.key(0)), task.init(jax.random.key(0))
    chex.assert_trees_all_equal(a, b)
    c = task.init(jax.random.key(1))
    self.assertFalse(np.allclose(a["Dense_0"]["kernel"], c["Dense_0"]["kernel"]))

  def test_glorot_scale(self):
    kernel = tasks.get("mlp_sigmoid").init(jax.random.key(0))["Dense_0"]["kernel"]
    limit = np.sqrt(6.0 / (64 + 20))
    self.assertLessEqual(float(jnp.abs(kernel).max()), limit)
    self.assertAlmostEqual(float(kernel.std()), limit / np.sqrt(3), delta=0.1 * limit)

  def test_quadratic_optimum_is_known(self):
    task = tasks.get("quadratic")
    metrics = task.evaluate({"w": task.optimum}, "test")
    self.assertLess(float(metrics["loss"]), 1e-8)
    self.assertEqual(float(metrics["distance_to_optimum"]), 0.0)

  def test_accuracy_of_a_perfect_classifier(self):
    x = np.eye(4, dtype=np.float32)[np.arange(40) % 4]
    ds = data.from_arrays("onehot", (x, np.arange(40) % 4), test=(x, np.arange(40) % 4))
    task = tasks.get("mlp_relu", ds)
    # A classifier that copies its one-hot input is right on every example.
    params = jax.tree.map(jnp.zeros_like, task.init(jax.random.key(0)))
    params["Dense_0"]["kernel"] = jnp.eye(4, 20)
    params["Dense_1"]["kernel"] = jnp.eye(20, 4)
    self.assertEqual(float(task.evaluate(params, "test")["accuracy"]), 1.0)


class BadInputTest(parameterized.TestCase):

  def test_unknown_task(self):
    with self.assertRaisesRegex(tasks.TaskError, "unknown task 'resnet'; accepted: mlp_sigmoid"):
      tasks.get("resnet")

  def test_conv_on_flat_input_fails_before_compiling(self):
    flat = data.from_arrays("flat", (np.ones((20, 64), np.float32), np.arange(20) % 2))
    with self.assertRaisesRegex(tasks.TaskError, r"'conv' needs image inputs .* shape \(64,\)"):
      tasks.get("conv", flat)

  @parameterized.parameters(0, -3, 2.5, True)
  def test_bad_batch_size(self, batch_size):
    with self.assertRaisesRegex(tasks.TaskError, "batch_size must be a positive integer"):
      tasks.get("mlp_sigmoid", batch_size=batch_size)

  def test_quadratic_takes_no_dataset(self):
    with self.assertRaisesRegex(tasks.TaskError, "makes its own data"):
      tasks.get("quadratic", "digits")

  def test_unknown_split(self):
    task = tasks.get("mlp_sigmoid")
    params = task.init(jax.random.key(0))
    with self.assertRaisesRegex(ValueError, "unknown split 'dev'; accepted: train"):
      task.evaluate(params, "dev")


if __name__ == "__main__":
  absltest.main()
