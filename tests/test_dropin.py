"""A loaded learned optimizer in ordinary Flax code: linen TrainState, nnx.Optimizer, optax.chain."""

import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from absl.testing import absltest, parameterized
from flax import nnx
from flax.training import train_state

import flatl2o
from flatl2o import optimizers


def _data():
  x = jax.random.normal(jax.random.key(0), (64, 5))
  y = x @ jnp.arange(1.0, 6.0)[:, None]
  return x, y


def _train_dense_with(tx, steps: int):
  """A linen Dense layer after `steps` jitted TrainState steps: (initial params, state, loss)."""
  model = nn.Dense(1)
  x, y = _data()
  state = train_state.TrainState.create(
      apply_fn=model.apply, params=model.init(jax.random.key(1), x)["params"], tx=tx)
  before = state.params

  @jax.jit
  def step(state):
    loss, grads = jax.value_and_grad(
        lambda p: jnp.mean((state.apply_fn({"params": p}, x) - y) ** 2))(state.params)
    return state.apply_gradients(grads=grads), loss

  for _ in range(steps):
    state, loss = step(state)
  return before, state, loss


class EveryArchitectureTest(parameterized.TestCase):

  @parameterized.named_parameters(*[(n, n) for n in optimizers.learned_names()])
  def test_export_trains_a_linen_model(self, name):
    lopt = optimizers.learned(name)
    path = os.path.join(self.create_tempdir().full_path, "opt")
    flatl2o.save_optimizer(path, lopt, lopt.init(jax.random.key(0)))
    before, state, loss = _train_dense_with(flatl2o.load_optimizer(path), steps=3)
    self.assertTrue(jnp.isfinite(loss))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
      self.assertTrue(jnp.all(jnp.isfinite(b)))
      self.assertFalse(jnp.array_equal(a, b))


class DropInTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # An untrained L2O-DM is a poor optimizer but still an optimizer; what is tested
    # here is the plumbing, so a hand-set output scale keeps the steps sane.
    lopt = optimizers.L2ODM(output_scale=0.01)
    cls.path = os.path.join(absltest.get_default_test_tmpdir(), "dropin_opt")
    flatl2o.save_optimizer(cls.path, lopt, lopt.init(jax.random.key(0)))

  def test_linen_train_state(self):
    _, state, loss = _train_dense_with(flatl2o.load_optimizer(self.path), steps=3)
    self.assertEqual(int(state.step), 3)
    self.assertTrue(jnp.isfinite(loss))

  def test_nnx_optimizer(self):
    model = nnx.Linear(5, 1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, flatl2o.load_optimizer(self.path), wrt=nnx.Param)
    x, y = _data()
    before = model.kernel[...].copy()

    @nnx.jit
    def step(model, optimizer):
      loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
      optimizer.update(model, grads)
      return loss

    for _ in range(3):
      loss = step(model, optimizer)
    self.assertTrue(jnp.isfinite(loss))
    self.assertFalse(jnp.allclose(before, model.kernel[...]))

  def test_inside_optax_chain_with_clipping(self):
    learned = flatl2o.load_optimizer(self.path)
    tx = optax.chain(optax.clip_by_global_norm(1.0), learned)
    params = {"w": jnp.ones(4) * 3.0}
    grads = {"w": jnp.full(4, 100.0)}
    # Global norm 200 -> clipped to norm 1: every coordinate 100 / 200, by hand.
    clipped = {"w": jnp.full(4, 0.5)}
    state, alone_state = tx.init(params), learned.init(params)
    for _ in range(2):  # the second step also checks the learned state carried in the chain
      updates, state = jax.jit(tx.update)(grads, state, params)
      expected, alone_state = jax.jit(learned.update)(clipped, alone_state, params)
      self.assertTrue(jnp.all(jnp.isfinite(updates["w"])))
      self.assertFalse(jnp.allclose(updates["w"], 0.0))
      chex.assert_trees_all_close(updates, expected, rtol=1e-6, atol=0.0)
      # Not what the unclipped gradients give: the clip is really applied.
      unclipped, _ = learned.update(grads, alone_state, params)
      self.assertFalse(jnp.allclose(unclipped["w"], expected["w"], rtol=1e-3))
      params = optax.apply_updates(params, updates)

if __name__ == "__main__":
  absltest.main()
