"""Meta-training, validation, exports and L2O-DM against answers computed independently.

The other test files mostly check self-consistency (resume == uninterrupted,
vmap == loop). Here each result is recomputed another way: the inner loop
replayed step by step in Python with the same keys, model selection with
scripted validation scores, the LSTM in NumPy. Each test was seen to fail on a
deliberate break of the code it guards (listed in its docstring).
"""

import dataclasses
import functools
import os
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import absltest, parameterized
from flax import struct

import flatl2o
from flatl2o import checkpoints, flatness, meta, optimizers, tasks
from flatl2o.optimizers import l2o_dm

jax.config.update("jax_enable_x64", False)

# Float32 rounding differs between the scanned, vmapped, rematerialised code and
# the Python replay (fusion, summation order); a wrong key, aggregation or
# state is off by orders of magnitude more.
RTOL, ATOL = 2e-5, 1e-6


def _num_coordinates(tree) -> int:
  return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def _assert_trees_close(test, got, expected, rtol=RTOL, atol=ATOL):
  test.assertEqual(jax.tree.structure(got), jax.tree.structure(expected))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


@jax.jit
def _hand_loss_and_grad(task, params, key):
  """One optimizee's minibatch loss and gradient, straight from the task."""
  batch = task.sample_batch(key)
  return jax.value_and_grad(lambda p: task.loss(p, batch))(params)


@functools.partial(jax.jit, static_argnames="num_probes")
def _hand_trace(task, params, batch_key, probe_key, num_probes):
  batch = task.sample_batch(batch_key)
  return flatness.hessian_trace(lambda p: task.loss(p, batch), params, probe_key, num_probes)


@functools.partial(jax.jit, static_argnames="lopt")
def _hand_update(lopt, meta_params, grads, opt_state, params, losses):
  updates, opt_state = lopt.transform(meta_params).update(grads, opt_state, params, loss=losses)
  return optax.apply_updates(params, updates), opt_state


def _hand_steps(lopt, task, meta_params, params, opt_state, step_keys, alpha=None, probes=2):
  """The inner loop replayed in Python: one step per key, one optimizee at a time.

  Follows the documented derivation: step t uses `step_keys[t]`; optimizee b
  draws its minibatch from `split(step_keys[t], B)[b]` and its Hessian probes
  from `fold_in(that key, 1)`. The learned optimizer then updates the stacked
  meta-batch (a coordinatewise optimizer sees B optimizees as more coordinates).

  Returns:
    `(params, opt_state, losses[T, B], regularizer[T, B])`, NumPy float64 traces.
  """
  batch_size = jax.tree.leaves(params)[0].shape[0]
  losses, regs = [], []
  for step_key in step_keys:
    step_losses, step_regs, step_grads = [], [], []
    for b, key in enumerate(jax.random.split(step_key, batch_size)):
      own = jax.tree.map(lambda x: x[b], params)
      loss, grad = _hand_loss_and_grad(task, own, key)
      step_losses.append(loss)
      step_grads.append(grad)
      if alpha is not None:
        trace = _hand_trace(task, own, key, jax.random.fold_in(key, 1), probes)
        step_regs.append(float(alpha * trace / _num_coordinates(own)))
      else:
        step_regs.append(0.0)
    grads = jax.tree.map(lambda *g: jnp.stack(g), *step_grads)
    params, opt_state = _hand_update(lopt, meta_params, grads, opt_state, params,
                                     jnp.stack(step_losses))
    losses.append([float(l) for l in step_losses])
    regs.append(step_regs)
  return params, opt_state, np.asarray(losses, np.float64), np.asarray(regs, np.float64)


# Built once per process: eager initialisation of a vmapped Flax model is slow.
_LOPT = optimizers.L2ODM(hidden_size=4)


@functools.cache
def _setup(task_name="mlp_sigmoid"):
  """L2O-DM, a task (batch 8; digits for the MLP), meta-params, a fresh meta-batch of 2."""
  task = tasks.get(task_name, batch_size=8)
  meta_params = jax.jit(_LOPT.init)(jax.random.key(0))
  state = jax.jit(meta.init_inner, static_argnums=0)(
      _LOPT, task, meta_params, jax.random.split(jax.random.key(1), 2))
  return _LOPT, task, meta_params, state


# As meta_step runs it: one compilation per configuration.
_unroll = jax.jit(meta.unroll, static_argnums=(0, 2))


class UnrollTest(parameterized.TestCase):

  def test_init_inner_is_task_init_and_first_loss(self):
    """Catches: the init and minibatch keys of an optimizee swapped."""
    lopt, task, meta_params, state = _setup()
    keys = jax.random.split(jax.random.key(1), 2)
    for b, key in enumerate(keys):
      init_key, batch_key = jax.random.split(key)
      params = task.init(init_key)
      _assert_trees_close(self, jax.tree.map(lambda x: x[b], state.params), params, 0, 0)
      self.assertAlmostEqual(float(state.initial_loss[b]),
                             float(task.loss(params, task.sample_batch(batch_key))), places=5)
    self.assertEqual(int(state.step), 0)
    _assert_trees_close(self, state.opt_state,
                        lopt.transform(meta_params).init(state.params), 0, 0)

  @parameterized.named_parameters(
      ("mean", "mean", None),
      ("log_ratio", "log_ratio", None),
      # On the quadratic: with a Hessian term the MLP's unroll compiled for 20 s.
      # Two-probe estimates of tr(H)/n there vary with the key (1.4 to 9), so a
      # wrong probe key shows.
      ("mean_hessian_trace", "mean", 1.0),
  )
  def test_meta_loss_is_the_mean_of_replayed_inner_losses(self, meta_loss, alpha):
    """unroll == the inner loop replayed by hand, meta-loss recomputed from its losses.

    Catches: mean -> sum of the losses; log_ratio against the unroll's own first
    loss instead of the episode's; the regularizer's mean -> sum; its probes drawn
    from the batch key instead of fold_in(key, 1); the trace not divided by the
    number of coordinates; the step counter not advanced; one minibatch key
    shared by the whole meta-batch.
    """
    regularize = alpha is not None
    lopt, task, meta_params, state = _setup("quadratic" if regularize else "mlp_sigmoid")
    regularizer = (meta.RegularizerConfig(kind="hessian", hessian_estimator="trace",
                                          alpha=alpha, hessian_probes=2)
                   if regularize else meta.RegularizerConfig())
    config = meta.MetaTrainConfig(unroll_length=3, num_inner_steps=6, meta_batch_size=2,
                                  meta_loss=meta_loss, regularizer=regularizer)
    key = jax.random.key(7)
    got, (new_state, traces) = _unroll(lopt, task, config, meta_params, state, key)

    params, opt_state, losses, regs = _hand_steps(
        lopt, task, meta_params, state.params, state.opt_state, jax.random.split(key, 3),
        alpha=alpha)
    if meta_loss == "log_ratio":
      f0 = np.asarray(state.initial_loss, np.float64)
      expected = np.mean(np.log(losses / f0[None, :])) + np.mean(regs)
    else:
      expected = np.mean(losses) + np.mean(regs)
    if regularize:
      self.assertGreater(np.mean(regs), 0.01 * np.mean(losses))  # not negligible
    np.testing.assert_allclose(traces["losses"], losses, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(traces["regularizer"], regs, rtol=1e-4, atol=ATOL)
    self.assertAlmostEqual(float(got), expected, delta=RTOL * abs(expected) + ATOL)
    _assert_trees_close(self, new_state.params, params)
    _assert_trees_close(self, new_state.opt_state, opt_state)
    np.testing.assert_array_equal(new_state.initial_loss, state.initial_loss)
    self.assertEqual(int(new_state.step), int(state.step) + 3)

  def test_chained_truncations_equal_one_long_replay(self):
    """Two unrolls, the second from the first's state == 2T replayed steps, same keys.

    Catches: the optimizer state reset between truncations (tx.init instead of
    state.opt_state); the returned state holding the truncation's starting params.
    (A single truncation from a fresh state cannot see either.)
    """
    lopt, task, meta_params, start = _setup()
    config = meta.MetaTrainConfig(unroll_length=3, num_inner_steps=6, meta_batch_size=2)
    keys = jax.random.split(jax.random.key(11), 2)
    _, (middle, first) = _unroll(lopt, task, config, meta_params, start, keys[0])
    _, (end, second) = _unroll(lopt, task, config, meta_params, middle, keys[1])

    step_keys = jnp.concatenate([jax.random.split(k, 3) for k in keys])
    params, opt_state, losses, _ = _hand_steps(lopt, task, meta_params, start.params,
                                               start.opt_state, step_keys)
    np.testing.assert_allclose(np.concatenate([first["losses"], second["losses"]]), losses,
                               rtol=RTOL, atol=ATOL)
    _assert_trees_close(self, end.params, params)
    _assert_trees_close(self, end.opt_state, opt_state)
    np.testing.assert_array_equal(end.initial_loss, start.initial_loss)
    self.assertEqual(int(end.step), 6)

  def test_training_tricks_train_the_documented_objective(self):
    """Random scaling and the convex term: `f(c * x) + lambda/2 mean((x - v)^2)`, replayed.

    Catches: x_0 not divided by c (the function changes at the start); c drawn
    from U(-s, s) instead of exp(U(-s, s)); the convex term summed instead of
    averaged or missing its 1/2; the factors redrawn every truncation.
    """
    lopt, task, meta_params, _ = _setup()
    config = meta.MetaTrainConfig(unroll_length=3, num_inner_steps=6, meta_batch_size=2,
                                  random_scaling=2.0, convex_term=0.5)
    keys = jax.random.split(jax.random.key(1), 2)
    state = jax.jit(meta.init_inner, static_argnums=(0, 4))(lopt, task, meta_params, keys,
                                                            config)
    factors = np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.scale)])
    self.assertTrue(np.all((factors >= np.exp(-2.0) - 1e-6) & (factors <= np.exp(2.0) + 1e-6)))
    self.assertLess(factors.min(), np.exp(-1.5))
    self.assertGreater(factors.max(), np.exp(1.5))
    size = _num_coordinates(task.init(jax.random.key(0)))

    def objective(params, scale, anchor, batch):
      model = jax.tree.map(jnp.multiply, params, scale)
      squares = sum(jnp.sum((x - v) ** 2) for x, v in
                    zip(jax.tree.leaves(params), jax.tree.leaves(anchor)))
      return task.loss(model, batch) + 0.25 * squares / size

    own = lambda tree, b: jax.tree.map(lambda x: x[b], tree)
    for b, key in enumerate(keys):
      init_key, batch_key = jax.random.split(key)
      theta0 = task.init(init_key)
      _assert_trees_close(self, jax.tree.map(jnp.multiply, own(state.params, b),
                                             own(state.scale, b)), theta0, 1e-6, 1e-7)
      expected = objective(own(state.params, b), own(state.scale, b), own(state.anchor, b),
                           task.sample_batch(batch_key))
      self.assertAlmostEqual(float(state.initial_loss[b]), float(expected), places=5)

    step_keys = jax.random.split(jax.random.key(12), 2)
    _, (middle, first) = _unroll(lopt, task, config, meta_params, state, step_keys[0])
    _, (_, second) = _unroll(lopt, task, config, meta_params, middle, step_keys[1])
    value_and_grad = jax.jit(jax.value_and_grad(objective))
    params, opt_state, losses = state.params, state.opt_state, []
    for step_key in jnp.concatenate([jax.random.split(k, 3) for k in step_keys]):
      step = [value_and_grad(own(params, b), own(state.scale, b), own(state.anchor, b),
                             task.sample_batch(key))
              for b, key in enumerate(jax.random.split(step_key, 2))]
      losses.append([float(l) for l, _ in step])
      grads = jax.tree.map(lambda *g: jnp.stack(g), *[g for _, g in step])
      params, opt_state = _hand_update(lopt, meta_params, grads, opt_state, params,
                                       jnp.asarray(losses[-1]))
    np.testing.assert_allclose(np.concatenate([first["losses"], second["losses"]]), losses,
                               rtol=RTOL, atol=ATOL)

# Scripted validation results, in call order: the 4th is the best accuracy but
# its runs did not lower the training loss (collapsed), so it must not be chosen.
_SCRIPT = (
    {"accuracy": 0.5, "loss": 1.0, "initial_train_loss": 2.3, "final_train_loss": 1.0},
    {"accuracy": 0.9, "loss": 0.4, "initial_train_loss": 2.3, "final_train_loss": 0.5},
    {"accuracy": 0.7, "loss": 0.6, "initial_train_loss": 2.3, "final_train_loss": 0.7},
    {"accuracy": 0.95, "loss": 0.3, "initial_train_loss": 2.3, "final_train_loss": 2.2},
    {"accuracy": 0.6, "loss": 0.8, "initial_train_loss": 2.3, "final_train_loss": 0.6},
)


class ModelSelectionTest(absltest.TestCase):

  def test_returns_the_best_validated_meta_params_not_the_last(self):
    """Catches: returning the last meta-params; best_iteration off by one (iteration
    instead of meta-steps done); a collapsed optimizer selected for its accuracy.
    """
    seen = []

    def scripted_validate(lopt, task, meta_params, keys, horizon):
      del lopt, task, keys, horizon
      seen.append(jax.tree.map(np.array, meta_params))  # a copy: buffers may be reused
      return {k: jnp.float32(v) for k, v in _SCRIPT[len(seen) - 1].items()}

    lopt = optimizers.L2ODM(hidden_size=4)
    task = tasks.get("quadratic", batch_size=8)  # validation is scripted: any task will do
    config = meta.MetaTrainConfig(unroll_length=2, num_inner_steps=4, meta_batch_size=2,
                                  num_meta_iterations=5, validation_every=1,
                                  validation_horizon=4, validation_seeds=2, log_every=1,
                                  meta_learning_rate=1e-2)
    with mock.patch.object(meta.trainer, "validate", scripted_validate):
      result = meta.meta_train(lopt, task, config)

    self.assertLen(seen, 5)
    # Every meta-step moved the meta-params, so picking another one shows.
    for a, b in zip(seen, seen[1:]):
      self.assertFalse(all(np.array_equal(x, y) for x, y in
                           zip(jax.tree.leaves(a), jax.tree.leaves(b))))
    _assert_trees_close(self, result.meta_params, seen[1], 0, 0)
    self.assertEqual(result.best_iteration, 2)
    self.assertAlmostEqual(result.best_score, 0.9, places=6)
    self.assertFalse(result.collapsed)
    self.assertEqual([r["collapsed"] for r in result.history],
                     [False, False, False, True, False])


def _scripted(scores, seen):
  """A stand-in for `trainer.validate` returning accuracies `scores` in call order."""
  def validate(lopt, task, meta_params, keys, horizon):
    del lopt, task, keys, horizon
    seen.append(jax.tree.map(np.array, meta_params))
    accuracy = scores[len(seen) - 1]
    return {"accuracy": jnp.float32(accuracy), "loss": jnp.float32(1 - accuracy),
            "initial_train_loss": jnp.float32(2.0), "final_train_loss": jnp.float32(0.5)}
  return validate


class EnhancedRecipeTest(absltest.TestCase):
  """The L2O-enhanced recipe (Chen et al. 2020): curriculum and imitation."""

  def _config(self, **kwargs):
    return meta.MetaTrainConfig(**{
        "unroll_length": 2, "num_inner_steps": 8, "meta_batch_size": 2, "validation_every": 1,
        "validation_horizon": 4, "validation_seeds": 2, "log_every": 1,
        "meta_learning_rate": 1e-2, **kwargs})

  def test_curriculum_advances_when_validation_stalls_and_restarts_from_the_best(self):
    """Scores 0.5, 0.9, 0.7 (stall: advance), 0.8, 0.6 (stall: advance), 0.95.

    Catches: advancing on an improvement; not restarting from the best
    meta-parameters; episodes that ignore the stage's horizon; the stage best
    carried over from the previous stage (then 0.8 would count as a stall).
    """
    seen, horizons_run = [], []
    real_meta_step = meta.trainer.meta_step

    def recording_meta_step(lopt, config, task, meta_params, meta_opt_state, states, key):
      horizons_run.append((config.num_inner_steps, int(states.step)))
      return real_meta_step(lopt, config, task, meta_params, meta_opt_state, states, key)

    lopt = optimizers.L2ODM(hidden_size=4)
    task = tasks.get("quadratic", batch_size=8)
    config = self._config(num_meta_iterations=6, curriculum=True, curriculum_horizons=(2, 4, 8))
    with mock.patch.object(meta.trainer, "validate", _scripted([.5, .9, .7, .8, .6, .95], seen)), \
         mock.patch.object(meta.trainer, "meta_step", recording_meta_step):
      result = meta.meta_train(lopt, task, config)
    self.assertEqual([r["horizon"] for r in result.history], [2, 2, 4, 4, 8, 8])
    # Meta-step i (1-based) ran at the horizon set by validation i - 1.
    self.assertEqual([h for h, _ in horizons_run], [2, 2, 2, 4, 4, 8])
    for horizon, step in horizons_run:
      self.assertLess(step, horizon)  # every episode ends at its stage's horizon
    # The third meta-step's validation stalled: the fourth started from the second's
    # meta-parameters (the best), so the fourth validation saw best + one step.
    self.assertEqual(result.best_iteration, 6)
    with mock.patch.object(meta.trainer, "validate", _scripted([.5, .9, .7], [])):
      three = meta.meta_train(lopt, task, dataclasses.replace(config, num_meta_iterations=3))
    _assert_trees_close(self, three.last_meta_params, seen[1], 0, 0)
    _assert_trees_close(self, three.meta_params, seen[1], 0, 0)

  def test_imitation_steps_follow_the_ratio_and_leave_the_episode_alone(self):
    """Catches: the draw not deterministic in the meta-step (resume would differ); the
    episode advanced by an imitation step; an imitation loss that is not zero for a
    learned optimizer that is Adam."""
    lopt = optimizers.L2ODM(hidden_size=4)
    task = tasks.get("quadratic", batch_size=8)
    config = self._config(num_meta_iterations=40, imitation_ratio=0.25)
    with mock.patch.object(meta.trainer, "validate", _scripted([0.5] * 40, [])):
      result = meta.meta_train(lopt, task, config)
    flags = [r["imitation"] for r in result.history]
    self.assertBetween(sum(flags), 4, 16)  # Binomial(40, 0.25): 10 +- 2.7
    with mock.patch.object(meta.trainer, "validate", _scripted([0.5] * 40, [])):
      again = meta.meta_train(lopt, task, config)
    self.assertEqual(flags, [r["imitation"] for r in again.history])
    for r in result.history:
      self.assertEqual("inner_loss_last" in r, not r["imitation"])

  @pytest.mark.slow  # meta-trains three times (whole, interrupted, resumed)
  def test_interrupted_recipe_run_resumes_to_the_uninterrupted_result(self):
    """Curriculum + imitation + tricks, stopped (should_stop) and resumed from the run directory.

    Catches: the curriculum stage or its best score missing from the checkpoint
    (the resumed run would train at the first horizon again); the imitation draw
    depending on anything but the meta-step; an interrupt that loses its step.
    """
    lopt = optimizers.L2ODM(hidden_size=4)
    task = tasks.get("quadratic", batch_size=8)
    config = self._config(num_meta_iterations=12, curriculum=True, curriculum_horizons=(2, 4, 8),
                          imitation_ratio=0.3, random_scaling=1.0, validation_every=2,
                          checkpoint_every=5)
    full = meta.meta_train(lopt, task, config)
    run_dir = os.path.join(self.create_tempdir().full_path, "run")
    calls = []
    with self.assertRaises(meta.MetaTrainingInterrupted) as stopped:
      meta.meta_train(lopt, task, config, run_dir=run_dir,
                      should_stop=lambda: calls.append(1) or len(calls) >= 7)
    self.assertEqual(stopped.exception.iteration, 7)
    resumed = meta.meta_train(lopt, task, config, run_dir=run_dir)
    self.assertEqual(resumed.resumed_from, 7)
    _assert_trees_close(self, resumed.last_meta_params, full.last_meta_params, 0, 0)
    self.assertEqual([r.get("horizon") for r in full.history if r["iteration"] > 7],
                     [r.get("horizon") for r in resumed.history])
    self.assertGreater(len({r.get("horizon") for r in full.history}), 1)  # it did advance

  def test_imitation_loss_is_the_relative_distance_to_adam(self):
    """Zero for a 'learned' optimizer that is Adam at the teacher's rate, and
    ||u - a||^2 / ||a||^2 = (1 - s)^2 for one that is s times Adam.

    Catches: an absolute (not relative) error; a squared error not summed over
    every leaf; the teacher's updates mixed up with the learned ones.
    """
    @struct.dataclass
    class ScaledAdam:
      scale: float = struct.field(pytree_node=False, default=1.0)
      name = "scaled_adam"
      coordinatewise = True

      def init(self, key):
        return {"unused": jnp.zeros(1)}

      def transform(self, meta_params):
        return optax.chain(optax.adam(meta.imitation.TEACHER_LEARNING_RATE),
                           optax.scale(self.scale))

    task = tasks.get("quadratic", batch_size=8)
    config = self._config()
    for scale, expected in ((1.0, 0.0), (0.5, 0.25), (-1.0, 4.0)):
      loss = meta.imitation.imitation_loss(ScaledAdam(scale), task, config, {"unused": jnp.zeros(1)},
                                           jax.random.key(0))
      self.assertAlmostEqual(float(loss), expected, places=5)

@struct.dataclass
class _SplitRecordingTask(tasks.ClassificationTask):
  """A classification task that records which splits `evaluate` is asked for."""

  def evaluate(self, params, split: str = "test"):
    # `split` is a static string, so this runs (once) while validate is traced.
    _SplitRecordingTask.splits_seen.append(split)
    return super().evaluate(params, split)


_SplitRecordingTask.splits_seen = []


class ValidationTest(absltest.TestCase):

  def test_scores_the_validation_split_of_rolled_out_optimizees(self):
    """Catches: the 'test' split scored instead of 'validation'; the train-loss
    windows taken from the wrong ends; a mean over keys replaced by a sum.
    """
    lopt = optimizers.L2ODM(hidden_size=4)
    base = tasks.get("mlp_sigmoid", batch_size=8)
    task = _SplitRecordingTask(data=base.data, model=base.model, name=base.name,
                               batch_size=base.batch_size)
    meta_params = lopt.init(jax.random.key(3))
    keys = jax.random.split(jax.random.key(4), 3)
    horizon = 20
    _SplitRecordingTask.splits_seen.clear()
    got = meta.validate(lopt, task, meta_params, keys, horizon)
    self.assertEqual(set(_SplitRecordingTask.splits_seen), {"validation"})

    params, losses = jax.jit(meta.rollout, static_argnums=(0, 4))(lopt, base, meta_params,
                                                                  keys, horizon)
    per_key = [base.evaluate(jax.tree.map(lambda x: x[b], params), "validation")
               for b in range(len(keys))]
    accuracy = np.mean([float(m["accuracy"]) for m in per_key])
    loss = np.mean([float(m["loss"]) for m in per_key])
    # Accuracy is a count over 144 examples: float noise between the two programs
    # could at most flip one borderline example of one optimizee.
    self.assertAlmostEqual(float(got["accuracy"]), accuracy,
                           delta=1.01 / (len(keys) * base.data.split("validation")[1].shape[0]))
    self.assertAlmostEqual(float(got["loss"]), loss, delta=1e-5 * loss)
    # The collapse check compares the first and last tenth of the run.
    losses, window = np.asarray(losses, np.float64), horizon // 10
    self.assertAlmostEqual(float(got["initial_train_loss"]), losses[:window].mean(), places=5)
    self.assertAlmostEqual(float(got["final_train_loss"]), losses[-window:].mean(), places=5)


class ExportTest(absltest.TestCase):

  def test_exporting_again_replaces_the_export_and_leaves_nothing_beside_it(self):
    """Catches: the old export kept (or its '.old' copy left) when a path is reused."""
    lopt = optimizers.L2ODM(hidden_size=3)
    a, b = lopt.init(jax.random.key(0)), lopt.init(jax.random.key(1))
    parent = self.create_tempdir().full_path
    path = f"{parent}/optimizer"
    flatl2o.save_optimizer(path, lopt, a)
    flatl2o.save_optimizer(path, lopt, b)
    loaded_lopt, loaded = checkpoints.load_learned(path)
    self.assertEqual(loaded_lopt, lopt)
    _assert_trees_close(self, loaded, b, 0, 0)
    self.assertFalse(all(np.array_equal(x, y) for x, y in
                         zip(jax.tree.leaves(a), jax.tree.leaves(b))))
    self.assertEqual(sorted(os.listdir(parent)), ["optimizer"])


def _np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _np_log_sign(g, k):
  """(log|g| / k, sign g) where |g| >= e^-k, else (-1, e^k g): Andrychowicz et al., app. A."""
  out = np.empty((2, g.size))
  for j, v in enumerate(g):
    if abs(v) >= np.exp(-k):
      out[:, j] = np.log(abs(v)) / k, np.sign(v)
    else:
      out[:, j] = -1.0, np.exp(k) * v
  return out


def _np_l2o_dm_step(meta_params, grad, hidden, cell, k, output_scale):
  """One step of the 2-layer LSTM optimizer in float64 NumPy; gate order i, f, g, o."""
  x = _np_log_sign(grad, k)
  new_hidden, new_cell = [], []
  for layer, p in enumerate(meta_params["lstm"]):
    w, bias = np.asarray(p["w"], np.float64), np.asarray(p["b"], np.float64)
    z = w @ np.concatenate([x, hidden[layer]]) + bias
    size = hidden[layer].shape[0]
    i, f, g, o = (z[n * size:(n + 1) * size] for n in range(4))
    c = _np_sigmoid(f) * cell[layer] + _np_sigmoid(i) * np.tanh(g)
    x = _np_sigmoid(o) * np.tanh(c)
    new_hidden.append(x)
    new_cell.append(c)
  out = (np.asarray(meta_params["out_w"], np.float64) @ x
         + np.asarray(meta_params["out_b"], np.float64))[0]
  return output_scale * out, new_hidden, new_cell


class L2ODMReferenceTest(absltest.TestCase):

  def test_several_steps_from_a_random_state_match_numpy(self):
    """Catches: gates read in another order (i <-> f, g <-> o); the cell not carried
    from the state; the log-sign threshold e^-k moved by 5% either way; the
    small-gradient branch's e^k scaling dropped.
    """
    lopt = optimizers.L2ODM(hidden_size=3, num_layers=2)
    rng = np.random.default_rng(0)
    meta_params = lopt.init(jax.random.key(5))
    # Non-zero biases everywhere (init has zeros but the forget gate's), so a gate
    # read from the wrong rows changes the result.
    meta_params = jax.tree.map(
        lambda x: x + jnp.asarray(rng.normal(0.0, 0.5, x.shape), jnp.float32), meta_params)
    n = 6
    zero = lopt.init_state(n)
    self.assertLen(zero.hidden, 2)
    np.testing.assert_array_equal(zero.hidden[0], np.zeros((3, n)))
    hidden = [rng.normal(0.0, 0.5, (3, n)) for _ in range(2)]
    cell = [rng.normal(0.0, 1.0, (3, n)) for _ in range(2)]
    state = l2o_dm.L2ODMState(hidden=tuple(jnp.asarray(h, jnp.float32) for h in hidden),
                              cell=tuple(jnp.asarray(c, jnp.float32) for c in cell))
    e = np.exp(-5.0)
    grads = [  # both log-sign branches, both signs, zero, and both sides of the threshold
        np.array([0.3, -2.0, 1e-4, -3e-3, 0.0, 1.5 * e]),
        np.array([-0.02, 4.0, -0.5 * e, 2e-6, 0.9 * e, -1.1 * e]),
        np.array([1e-3, -1e-3, 10.0, -10.0, 0.05, -0.7]),
        np.array([0.0, 0.0, 1.0, -1.0, e * 1.01, -e * 0.99]),
    ]
    step = jax.jit(lopt.step)
    for t, g in enumerate(grads):
      update, state = step(meta_params, jnp.asarray(g, jnp.float32), state)
      expected, hidden, cell = _np_l2o_dm_step(meta_params, np.asarray(g, np.float32),
                                               hidden, cell, lopt.preprocess_k,
                                               lopt.output_scale)
      np.testing.assert_allclose(update, expected, rtol=1e-4, atol=1e-6, err_msg=f"step {t}")
      for layer in range(2):
        np.testing.assert_allclose(state.hidden[layer], hidden[layer], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(state.cell[layer], cell[layer], rtol=1e-4, atol=1e-6)


if __name__ == "__main__":
  absltest.main()
