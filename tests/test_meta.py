"""Meta-training: it learns, resumes exactly, guards non-finite steps, checks its run directory."""

import contextlib
import io
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from flatl2o import checkpoints, meta, optimizers, tasks
from flatl2o import data as flatl2o_data

SMALL = dict(unroll_length=5, num_inner_steps=20, meta_batch_size=2, validation_every=10,
             validation_horizon=20, validation_seeds=2, checkpoint_every=5, log_every=5)


def _cast(tree, dtype):
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


class MetaTrainTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.task = tasks.get("mlp_sigmoid", batch_size=32)

  @parameterized.named_parameters(
      ("l2o_dm_mean", optimizers.L2ODM(), "mean"),
      ("l2o_dm_log_ratio", optimizers.L2ODM(), "log_ratio"),
      ("mlp_lopt_mean", optimizers.MLPLOpt(), "mean"),
  )
  @pytest.mark.slow  # 40 meta-steps, then validation, per case
  def test_learns(self, lopt, meta_loss):
    config = meta.MetaTrainConfig(num_meta_iterations=40, meta_learning_rate=1e-2,
                                  meta_loss=meta_loss, **SMALL)
    result = meta.meta_train(lopt, self.task, config)
    keys = jax.random.split(jax.random.key(123), 4)
    before = meta.validate(lopt, self.task, lopt.init(jax.random.key(0)), keys, 60)
    after = meta.validate(lopt, self.task, result.last_meta_params, keys, 60)
    self.assertLess(float(after["final_train_loss"]), 0.7 * float(before["final_train_loss"]))
    self.assertEqual(result.num_skipped, 0)
    validated = [h for h in result.history if "validation_score" in h]
    self.assertLen(validated, 4)
    self.assertEqual(result.best_score, max(h["validation_score"] for h in validated))
    chex.assert_trees_all_equal_structs(result.meta_params, lopt.init(jax.random.key(0)))

  @pytest.mark.slow  # three meta-trainings
  def test_runs_that_differ_in_seed_or_budget_share_one_compilation(self):
    lopt = optimizers.MLPLOpt()
    sizes = []
    for seed, iterations, every in ((0, 2, 1), (1, 3, 3), (2, 2, 2)):
      config = meta.MetaTrainConfig(**{**SMALL, "num_meta_iterations": iterations,
                                       "validation_every": every, "seed": seed})
      meta.meta_train(lopt, self.task, config, callback=lambda r: None)
      sizes.append((meta.trainer.meta_step._cache_size(),
                    meta.trainer.init_meta_batch._cache_size()))
    self.assertEqual(sizes[0], sizes[1])
    self.assertEqual(sizes[0], sizes[2])

  def test_vmapped_path_for_non_coordinatewise_optimizers_agrees(self):
    # L2O-DM is coordinatewise, so the folded meta-batch and the vmapped
    # fallback (used by architectures that mix coordinates) must agree.
    class VmappedL2ODM(optimizers.L2ODM):
      coordinatewise = False

    config = meta.MetaTrainConfig(**SMALL)
    results = []
    for lopt in (optimizers.L2ODM(), VmappedL2ODM()):
      meta_params = optimizers.L2ODM().init(jax.random.key(0))
      states = meta.init_meta_batch(lopt, config, self.task, meta_params, jax.random.key(1))
      results.append(jax.value_and_grad(
          lambda t: meta.unroll(lopt, self.task, config, t, states, jax.random.key(2))[0])(meta_params))
    chex.assert_trees_all_close(results[0], results[1], rtol=2e-4, atol=1e-6)

  def test_non_finite_step_leaves_meta_parameters_unchanged(self):
    lopt = optimizers.L2ODM()
    config = meta.MetaTrainConfig(**SMALL)
    meta_params = lopt.init(jax.random.key(0))
    opt_state = meta.meta_optimizer(config).init(meta_params)
    states = meta.init_meta_batch(lopt, config, self.task, meta_params, jax.random.key(1))
    poisoned = states._replace(params=jax.tree.map(lambda x: x * jnp.nan, states.params))
    new_meta_params, new_opt_state, _, metrics = meta.meta_step(
        lopt, config, self.task, meta_params, jax.tree.map(jnp.copy, opt_state), poisoned,
        jax.random.key(2))
    self.assertFalse(bool(metrics["finite"]))
    chex.assert_trees_all_equal(new_meta_params, meta_params)
    chex.assert_trees_all_equal(new_opt_state, opt_state)

  @parameterized.parameters(
      ({"unroll_length": 0}, "unroll_length must be a positive integer"),
      ({"meta_batch_size": -1}, "meta_batch_size must be a positive integer"),
      ({"num_inner_steps": 30, "unroll_length": 20}, "must be a multiple of unroll_length"),
      ({"meta_learning_rate": 0.0}, "meta_learning_rate must be a positive number"),
      ({"meta_loss": "sum"}, "unknown meta_loss 'sum'; accepted: mean, log_ratio"),
  )
  def test_bad_config(self, kwargs, message):
    with self.assertRaisesRegex(ValueError, message):
      meta.MetaTrainConfig(**kwargs)



class SecondOrderTest(absltest.TestCase):
  """`second_order=True` is the exact meta-gradient: central differences agree, first order not."""

  def _meta_loss(self, second_order):
    """Float64 meta-loss of one 5-step truncation: L2O-DM (4 units) on a 3-input sigmoid MLP."""
    x = np.asarray(jax.random.normal(jax.random.key(5), (40, 3)))
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5)
    data = flatl2o_data.from_arrays("tiny", (x, y), test=(x, y))
    data = data.replace(**{f"{s}_x": getattr(data, f"{s}_x").astype(jnp.float64)
                           for s in ("train", "validation", "test")})
    task = tasks.get("mlp_sigmoid", data, batch_size=8)
    # output_scale=1: steps large enough that the inner gradients' dependence on the
    # meta-parameters (what first order drops) moves the meta-gradient by ~25%.
    lopt = optimizers.L2ODM(hidden_size=4, num_layers=1, output_scale=1.0)
    config = meta.MetaTrainConfig(unroll_length=5, num_inner_steps=10, meta_batch_size=2,
                                  second_order=second_order)
    meta_params = _cast(lopt.init(jax.random.key(0)), jnp.float64)
    states = _cast(meta.init_meta_batch(lopt, config, task, meta_params, jax.random.key(1)),
                   jnp.float64)
    return jax.jit(lambda t: meta.unroll(lopt, task, config, t, states, jax.random.key(2))[0]), \
        meta_params

  def test_second_order_meta_gradient_matches_finite_differences(self):
    with jax.enable_x64(True):
      loss, meta_params = self._meta_loss(second_order=True)
      first_order_loss, _ = self._meta_loss(second_order=False)
      leaves, treedef = jax.tree.flatten(meta_params)
      keys = jax.random.split(jax.random.key(7), len(leaves))
      direction = [jax.random.normal(k, x.shape, jnp.float64) for k, x in zip(keys, leaves)]
      norm = np.sqrt(sum(float(jnp.sum(d**2)) for d in direction))
      direction = jax.tree.unflatten(treedef, [d / norm for d in direction])  # a unit vector
      eps = 1e-4
      plus = loss(jax.tree.map(lambda t, d: t + eps * d, meta_params, direction))
      minus = loss(jax.tree.map(lambda t, d: t - eps * d, meta_params, direction))
      numeric = float((plus - minus) / (2 * eps))
      value = float(loss(meta_params))  # the same meta-loss; only its gradient differs
      self.assertAlmostEqual(float(first_order_loss(meta_params)), value, delta=1e-12 * abs(value))

      def along(grad):
        chex.assert_tree_all_finite(grad)
        self.assertEqual(jax.tree.leaves(grad)[0].dtype, jnp.float64)
        return float(sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad),
                                                          jax.tree.leaves(direction))))

      second = along(jax.grad(loss)(meta_params))
      first = along(jax.grad(first_order_loss)(meta_params))
    self.assertAlmostEqual(second, numeric, delta=1e-4 * abs(numeric))
    # Measured: first order is ~25% off along this direction; 1e-2 leaves a wide margin.
    self.assertGreater(abs(first - numeric), 1e-2 * abs(numeric))


class ProgressTest(absltest.TestCase):

  def test_progress_line_has_the_rate_and_an_eta(self):
    lines = []
    show = meta.trainer.progress_printer(100, lines.append)
    show({"iteration": 10, "meta_loss": 1.5, "meta_steps_per_second": 2.0, "num_skipped": 0})
    show({"iteration": 40, "meta_loss": 1.0, "meta_steps_per_second": 0.01, "num_skipped": 1,
          "validation_score": 0.9, "best_validation_score": 0.95})
    self.assertEqual(lines[0], "meta-step 10/100 (10%)  meta_loss 1.5000  2.00 steps/s  "
                               "ETA 0m45s")
    self.assertEqual(lines[1], "meta-step 40/100 (40%)  meta_loss 1.0000  0.01 steps/s  "
                               "ETA 1h40m  validation score 0.9000 (best 0.9500)  skipped 1")

  def test_meta_train_progress_prints_to_stderr(self):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
      meta.meta_train(optimizers.L2ODM(hidden_size=2), tasks.get("quadratic", batch_size=8),
                      meta.MetaTrainConfig(**{**SMALL, "num_meta_iterations": 2,
                                              "log_every": 1}), progress=True)
    self.assertEqual([l.split(" (")[0] for l in err.getvalue().splitlines()],
                     ["meta-step 1/2", "meta-step 2/2"])


class RunDirectoryTest(absltest.TestCase):

  @pytest.mark.slow  # meta-trains three times (whole, interrupted, resumed)
  def test_interrupted_and_resumed_run_equals_uninterrupted(self):
    task = tasks.get("mlp_sigmoid", batch_size=32)
    lopt = optimizers.L2ODM()
    full_dir = self.create_tempdir().full_path
    full = meta.meta_train(lopt, task, meta.MetaTrainConfig(num_meta_iterations=15, **SMALL),
                           run_dir=full_dir)
    split_dir = self.create_tempdir().full_path
    meta.meta_train(lopt, task, meta.MetaTrainConfig(num_meta_iterations=10, **SMALL),
                    run_dir=split_dir)
    resumed = meta.meta_train(lopt, task, meta.MetaTrainConfig(num_meta_iterations=15, **SMALL),
                              run_dir=split_dir)
    self.assertEqual(resumed.resumed_from, 10)
    chex.assert_trees_all_equal(resumed.last_meta_params, full.last_meta_params)
    with open(os.path.join(split_dir, "metrics.jsonl")) as f:
      iterations = [json.loads(line)["iteration"] for line in f]
    self.assertEqual(iterations, [5, 10, 15])
    # The export is the selected optimizer and loads on its own.
    lopt2, meta_params2 = checkpoints.load_learned(os.path.join(full_dir, "optimizer"))
    self.assertEqual(lopt2, lopt)
    chex.assert_trees_all_equal(meta_params2, full.meta_params)
    self.assertTrue(os.path.isdir(os.path.join(full_dir, "tensorboard")))

  def test_other_configuration_is_refused_and_nothing_is_overwritten(self):
    task = tasks.get("mlp_sigmoid", batch_size=32)
    run_dir = self.create_tempdir().full_path
    meta.meta_train(optimizers.L2ODM(), task,
                    meta.MetaTrainConfig(num_meta_iterations=5, **SMALL), run_dir=run_dir)
    before = {f: os.path.getmtime(os.path.join(run_dir, f)) for f in os.listdir(run_dir)}
    with self.assertRaisesRegex(checkpoints.CheckpointError,
                                "belongs to a different configuration .*unroll_length was 5, now 10"):
      meta.meta_train(optimizers.L2ODM(), task,
                      meta.MetaTrainConfig(num_meta_iterations=5, **{**SMALL, "unroll_length": 10}),
                      run_dir=run_dir)
    with self.assertRaisesRegex(checkpoints.CheckpointError, "hidden_size was 20, now 8"):
      meta.meta_train(optimizers.L2ODM(hidden_size=8), task,
                      meta.MetaTrainConfig(num_meta_iterations=5, **SMALL), run_dir=run_dir)
    after = {f: os.path.getmtime(os.path.join(run_dir, f)) for f in os.listdir(run_dir)}
    self.assertEqual(before, after)

  def test_foreign_folder_is_refused(self):
    run_dir = self.create_tempdir()
    run_dir.create_file("notes.txt", content="mine")
    with self.assertRaisesRegex(checkpoints.CheckpointError, "not empty and holds no run.json"):
      meta.meta_train(optimizers.L2ODM(), tasks.get("quadratic"),
                      meta.MetaTrainConfig(num_meta_iterations=5, **SMALL),
                      run_dir=run_dir.full_path)


if __name__ == "__main__":
  absltest.main()
