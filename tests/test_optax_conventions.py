"""What optax users rely on, for a coordinatewise (L2O-DM) and a hierarchical (L2O-Scale) optimizer.

Each wrapper's result is compared with what the wrapper is documented to do,
computed from the bare learned transformation: `optax.chain`, `optax.masked`,
`optax.multi_transform`, `optax.MultiSteps`, `optax.apply_if_finite`, and the
`optax.tree_utils` state helpers (the recurrent state is flat, `[H, N]`, so
`tree_map_params` finds no parameter-shaped leaves in it).
"""

import chex
import jax
import jax.numpy as jnp
import optax
from absl.testing import absltest, parameterized

from flatl2o import optimizers

ARCHITECTURES = (("l2o_dm", "l2o_dm"), ("l2o_scale", "l2o_scale"))


def _learned(name):
  lopt = optimizers.learned(name)
  tx = lopt.transform(lopt.init(jax.random.key(0)))
  # The bare references run jitted too: op-by-op dispatch of the recurrent
  # cells costs more than compiling them.
  return optax.GradientTransformationExtraArgs(tx.init, jax.jit(tx.update))


def _params():
  return {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.array([0.1, -0.2, 0.3])}


def _grads(scale=1.0):
  return {"w": scale * jnp.array([[0.5, -0.1, 0.2], [0.0, 0.3, -0.4]]),
          "b": scale * jnp.array([1.0, -2.0, 0.5])}


class OptaxConventionsTest(parameterized.TestCase):

  @parameterized.named_parameters(*ARCHITECTURES)
  def test_chain_after_clipping_equals_the_learned_update_of_clipped_gradients(self, name):
    tx, params, grads = _learned(name), _params(), _grads(10.0)
    chained = optax.chain(optax.clip_by_global_norm(1.0), tx)
    got, _ = jax.jit(chained.update)(grads, chained.init(params), params)
    clipped, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    expected, _ = tx.update(clipped, tx.init(params), params)
    chex.assert_trees_all_close(got, expected, rtol=1e-6)

  @parameterized.named_parameters(*ARCHITECTURES)
  def test_multi_transform_learned_on_some_leaves_adam_on_the_rest(self, name):
    tx, params, grads = _learned(name), _params(), _grads()
    labels = {"w": "learned", "b": "adam"}
    combined = optax.multi_transform({"learned": tx, "adam": optax.adam(1e-3)}, labels)
    got, _ = jax.jit(combined.update)(grads, combined.init(params), params)
    adam, _ = optax.adam(1e-3).update({"b": grads["b"]}, optax.adam(1e-3).init({"b": params["b"]}))
    learned, _ = tx.update({"w": grads["w"]}, tx.init({"w": params["w"]}), {"w": params["w"]})
    chex.assert_trees_all_close(got, {"w": learned["w"], "b": adam["b"]}, rtol=1e-6)

  @parameterized.named_parameters(*ARCHITECTURES)
  def test_masked_leaves_pass_through(self, name):
    tx, params, grads = _learned(name), _params(), _grads()
    masked = optax.masked(tx, {"w": True, "b": False})
    got, _ = jax.jit(masked.update)(grads, masked.init(params), params)
    learned, _ = tx.update({"w": grads["w"]}, tx.init({"w": params["w"]}), {"w": params["w"]})
    chex.assert_trees_all_close(got["w"], learned["w"], rtol=1e-6)
    chex.assert_trees_all_equal(got["b"], grads["b"])

  @parameterized.named_parameters(*ARCHITECTURES)
  def test_multi_steps_accumulates_then_applies_the_mean_gradient(self, name):
    tx, params = _learned(name), _params()
    accumulating = optax.MultiSteps(tx, every_k_schedule=2)
    state = accumulating.init(params)
    update = jax.jit(accumulating.update)
    first, state = update(_grads(1.0), state, params)
    chex.assert_trees_all_equal(first, jax.tree.map(jnp.zeros_like, params))
    second, state = update(_grads(3.0), state, params)
    expected, _ = tx.update(_grads(2.0), tx.init(params), params)
    chex.assert_trees_all_close(second, expected, rtol=1e-5, atol=1e-8)
    chex.assert_trees_all_equal_structs(state, accumulating.init(params))

  @parameterized.named_parameters(*ARCHITECTURES)
  def test_apply_if_finite_skips_a_nan_step_and_keeps_the_state(self, name):
    tx, params = _learned(name), _params()
    guarded = optax.apply_if_finite(tx, max_consecutive_errors=3)
    state = guarded.init(params)
    bad = jax.tree.map(lambda g: g.at[0].set(jnp.nan), _grads())
    update = jax.jit(guarded.update)
    skipped, state = update(bad, state, params)
    chex.assert_trees_all_equal(skipped, jax.tree.map(jnp.zeros_like, params))
    got, _ = update(_grads(), state, params)
    expected, _ = tx.update(_grads(), tx.init(params), params)
    chex.assert_trees_all_close(got, expected, rtol=1e-6)

  @parameterized.named_parameters(*ARCHITECTURES)
  def test_recurrent_state_is_flat_so_tree_map_params_leaves_it_alone(self, name):
    tx, params = _learned(name), _params()
    state = tx.init(params)
    mapped = optax.tree_utils.tree_map_params(tx, lambda x: x + 1.0, state)
    chex.assert_trees_all_equal(mapped, state)


if __name__ == "__main__":
  absltest.main()
