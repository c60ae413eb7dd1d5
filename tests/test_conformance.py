"""One conformance suite for every optimizer in the registry, hand-designed and learned.

A new optimizer is covered by registering it (`optimizers.names()` or
`optimizers.learned_names()`). Each gets: an odd pytree (nested dicts, a
scalar leaf, a bf16 leaf, a zero-size leaf) whose structure, shapes and dtypes
its updates keep; a state whose structure and dtypes do not change across
updates, so `lax.scan` and `lax.cond` over it work; `jit` and `vmap` equal to
eager; finite updates on zero gradients; and, for the hand-designed ones, a
short run that lowers the `quadratic` task's loss (learned ones, untrained:
finite and bounded).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

from flatl2o import evaluation, optimizers, tasks

HAND = tuple(optimizers.names())
LEARNED = tuple(optimizers.learned_names())
ALL = tuple((f"hand_{n}", n) for n in HAND) + tuple((f"learned_{n}", n) for n in LEARNED)


@functools.cache
def _tx(name):
  if name in HAND:
    return optimizers.get(name)
  lopt = optimizers.learned(name)
  return lopt.transform(lopt.init(jax.random.key(0)))


def _odd_tree():
  return {"dense": {"kernel": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4),
                    "bias": jnp.zeros((4,))},
          "scale": jnp.float32(0.5),
          "half": jnp.asarray([0.25, -0.5, 1.0], jnp.bfloat16),
          "empty": jnp.zeros((0, 3))}


def _loss(params):
  """A smooth loss on the odd tree (each leaf a little quadratic)."""
  return sum(jnp.sum((x.astype(jnp.float32) - 0.3) ** 2) for x in jax.tree.leaves(params))


def _grad_fn(params, key):
  del key
  return jax.grad(_loss)(params)


def _update(tx, grads, state, params):
  """`tx.update` with the extra arguments it accepts (as evaluation.train passes them)."""
  extra = {"loss": _loss(params), "grad_fn": _grad_fn}
  return tx.update(grads, state, params,
                   **{k: extra[k] for k in evaluation.accepted_extra_args(tx)})


def _signature(tree):
  return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


class ConformanceTest(parameterized.TestCase):

  @parameterized.named_parameters(*ALL)
  def test_odd_pytree_keeps_structure_shapes_and_dtypes(self, name):
    tx, params = _tx(name), _odd_tree()
    state = tx.init(params)
    updates, new_state = _update(tx, jax.grad(_loss)(params), state, params)
    self.assertEqual(_signature(updates), _signature(params))
    self.assertEqual(_signature(new_state), _signature(state))
    chex.assert_tree_all_finite(updates)

  @parameterized.named_parameters(*ALL)
  def test_state_is_stable_under_scan_and_cond(self, name):
    tx, params = _tx(name), _odd_tree()

    def body(carry, _):
      params, state = carry
      updates, state = _update(tx, jax.grad(_loss)(params), state, params)
      return (optax.apply_updates(params, updates), state), None

    @jax.jit
    def run(params):
      (params, state), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=3)
      # Either branch must return the same structure and dtypes as the state.
      return jax.lax.cond(True, lambda s: body((params, s), None)[0],
                          lambda s: (params, s), state)

    params_out, state_out = run(params)
    self.assertEqual(_signature(params_out), _signature(params))
    self.assertEqual(_signature(state_out), _signature(tx.init(params)))

  @parameterized.named_parameters(*ALL)
  def test_state_dtypes_are_stable_in_x64_mode(self, name):
    with jax.enable_x64(True):
      tx, params = _tx(name), _odd_tree()
      state = tx.init(params)
      _, new_state = jax.jit(lambda p, s: _update(tx, jax.grad(_loss)(p), s, p))(params, state)
      self.assertEqual(_signature(new_state), _signature(state))
      scanned = jax.jit(lambda p, s: jax.lax.scan(
          lambda s, _: (_update(tx, jax.grad(_loss)(p), s, p)[1], None), s, None, length=2)[0])
      self.assertEqual(_signature(scanned(params, state)), _signature(state))

  @parameterized.named_parameters(*ALL)
  def test_jit_and_vmap_agree_with_eager(self, name):
    tx = _tx(name)
    params = {"w": jnp.linspace(-1.0, 1.0, 6), "b": jnp.float32(0.2)}
    grads = jax.grad(_loss)(params)
    eager, _ = _update(tx, grads, tx.init(params), params)
    jitted, _ = jax.jit(lambda g, p: _update(tx, g, tx.init(p), p))(grads, params)
    chex.assert_trees_all_close(jitted, eager, rtol=1e-5, atol=1e-6)

    stacked = jax.tree.map(lambda x: jnp.stack([x, 2.0 * x]), params)
    stacked_grads = jax.tree.map(lambda x: jnp.stack([x, x]), grads)
    vmapped, _ = jax.vmap(lambda g, p: _update(tx, g, tx.init(p), p))(stacked_grads, stacked)
    for i in range(2):
      one = jax.tree.map(lambda x: x[i], stacked)
      expected, _ = _update(tx, jax.tree.map(lambda x: x[i], stacked_grads), tx.init(one), one)
      chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], vmapped), expected,
                                  rtol=1e-5, atol=1e-6)

  @parameterized.named_parameters(*ALL)
  def test_zero_gradients_give_finite_updates(self, name):
    tx, params = _tx(name), _odd_tree()
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = tx.init(params)
    for _ in range(2):
      updates, state = _update(tx, zeros, state, params)
      chex.assert_tree_all_finite(updates)
    chex.assert_tree_all_finite(state)

  @parameterized.named_parameters(*ALL)
  def test_short_run_on_the_quadratic(self, name):
    # Curvature in [1, 2]: the registry's default learning rates are tuned on the
    # classifiers, and sgd's 0.3 is above 2 / L on the default quadratic (L = 10).
    task = tasks.QuadraticTask.create(condition_number=2.0)
    result = evaluation.train(task, _tx(name), 100, jax.random.key(0), eval_every=100)
    first, last = result.metrics["test"]["loss"][[0, -1]]
    self.assertTrue(np.all(np.isfinite(result.train_loss)))
    if name in HAND:
      self.assertLess(last, 0.9 * first)  # a hand-designed optimizer lowers it
    else:
      self.assertLess(last, 10.0 * first)  # untrained: finite and bounded


if __name__ == "__main__":
  absltest.main()
