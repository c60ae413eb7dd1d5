"""Learned optimizers as optax transformations: any pytree, dtypes, jit/vmap/grad, semantics."""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

from flatl2o import optimizers
from flatl2o.optimizers import base

# Every registered architecture, at its defaults: a new one is covered by registering it.
ARCHITECTURES = tuple((name, optimizers.learned(name)) for name in optimizers.learned_names())
# Each architecture's setting that scales its steps (every registered one needs an entry).
_STEP_SCALE = {"l2o_dm": "output_scale", "rnnprop": "output_scale",
               "l2o_scale": "initial_learning_rate", "mlp_lopt": "step_size"}
COORDINATEWISE = tuple((name, lopt) for name, lopt in ARCHITECTURES if lopt.coordinatewise)


def _tree():
  return {"dense": {"kernel": jnp.linspace(-1, 1, 12).reshape(3, 4), "bias": jnp.zeros(4)},
          "scale": jnp.float32(0.5),
          "half": jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3) / 7,
          "list": [jnp.ones((2, 1, 2))]}


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


class TransformTest(parameterized.TestCase):

  @parameterized.named_parameters(*ARCHITECTURES)
  def test_any_pytree_keeps_structure_and_dtypes(self, lopt):
    tx = lopt.transform(lopt.init(jax.random.key(0)))
    params = _tree()
    grads = jax.tree.map(lambda x: (x * 0.3 + 0.1).astype(x.dtype), params)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params, loss=jnp.float32(1.0), unused=3)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
    chex.assert_tree_all_finite(updates)
    self.assertEqual(updates["half"].dtype, jnp.bfloat16)
    # A second step uses the recurrent state.
    updates2, _ = jax.jit(tx.update)(grads, state, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates2, params)

  @parameterized.named_parameters(*ARCHITECTURES)
  def test_rejects_integer_leaves(self, lopt):
    tx = lopt.transform(lopt.init(jax.random.key(0)))
    with self.assertRaisesRegex(ValueError, r"leaf \['step'\] has dtype int32"):
      tx.init({"w": jnp.ones(3), "step": jnp.int32(0)})
    state = tx.init({"w": jnp.ones(3)})
    with self.assertRaisesRegex(ValueError, r"updates leaf \['w'\] has dtype int32"):
      tx.update({"w": jnp.ones(3, jnp.int32)}, state)

  @parameterized.named_parameters(*ARCHITECTURES)
  def test_empty_pytree(self, lopt):
    tx = lopt.transform(lopt.init(jax.random.key(0)))
    updates, _ = tx.update({}, tx.init({}), {})
    self.assertEqual(updates, {})

  @parameterized.named_parameters(*ARCHITECTURES)
  def test_meta_gradient_through_unroll(self, lopt):
    target = jnp.array([1.0, -2.0, 3.0])

    def meta_loss(meta_params):
      tx = lopt.transform(meta_params)
      params = {"w": jnp.zeros(3)}
      state = tx.init(params)
      total = 0.0
      for _ in range(3):
        loss, grads = jax.value_and_grad(lambda p: jnp.sum((p["w"] - target) ** 2))(params)
        updates, state = tx.update(grads, state, params, loss=loss)
        params = optax.apply_updates(params, updates)
        total += loss
      return total

    grads = jax.jit(jax.grad(meta_loss))(lopt.init(jax.random.key(1)))
    chex.assert_tree_all_finite(grads)
    self.assertGreater(float(optax.global_norm(grads)), 0.0)

  @parameterized.named_parameters(*ARCHITECTURES)
  def test_vmapped_batch_equals_separate_calls(self, lopt):
    tx = lopt.transform(lopt.init(jax.random.key(0)))
    grads = [{"w": jax.random.normal(jax.random.key(i), (5, 3)), "b": jnp.full(3, 0.1 * i)}
             for i in range(3)]
    losses = jnp.array([1.0, 2.0, 0.5])
    separate = []
    for g, loss in zip(grads, losses):
      u, s = tx.update(g, tx.init(g), g, loss=loss)
      separate.append(tx.update(g, s, g, loss=loss / 2)[0])  # a second step uses the state
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *grads)

    def two_steps(g, loss):
      u, s = tx.update(g, tx.init(g), g, loss=loss)
      return tx.update(g, s, g, loss=loss / 2)[0]

    chex.assert_trees_all_close(jax.vmap(two_steps)(stacked, losses),
                                jax.tree.map(lambda *x: jnp.stack(x), *separate),
                                rtol=1e-5, atol=1e-7)

  @parameterized.parameters(*optimizers.learned_names())
  def test_numeric_setting_can_be_injected_and_scheduled(self, name):
    self.assertIn(name, _STEP_SCALE, f"add {name}'s step-scaling setting to _STEP_SCALE")
    field = _STEP_SCALE[name]
    lopt = optimizers.learned(name)
    meta_params = lopt.init(jax.random.key(0))
    value = getattr(lopt, field)
    factory = lambda setting: dataclasses.replace(lopt, **{field: setting}).transform(meta_params)
    params = {"w": jnp.linspace(-1.0, 1.0, 5)}
    grads = {"w": jnp.array([0.3, -0.2, 0.1, 0.0, 0.5])}

    def two_updates(tx):
      state = tx.init(params)
      update = jax.jit(lambda s: tx.update(grads, s, params, loss=jnp.float32(1.0)))
      _, state = update(state)
      return update(state)[0]

    for injected, concrete in ((value, value), (lambda count: 2.0 * value, 2.0 * value)):
      got = two_updates(optax.inject_hyperparams(factory)(setting=injected))
      chex.assert_trees_all_close(got, two_updates(factory(concrete)), rtol=1e-6)
    with self.assertRaisesRegex(ValueError, f"{field} must be"):
      factory(-1.0)

  @parameterized.named_parameters(*COORDINATEWISE)
  def test_coordinatewise_batch_equals_separate_calls(self, lopt):
    tx = lopt.transform(lopt.init(jax.random.key(0)))
    grads = [{"w": jax.random.normal(jax.random.key(i), (5, 3))} for i in range(3)]
    separate = [tx.update(g, tx.init(g), g)[0] for g in grads]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *grads)
    together, _ = tx.update(stacked, tx.init(stacked), stacked)
    chex.assert_trees_all_close(together, jax.tree.map(lambda *x: jnp.stack(x), *separate),
                                rtol=1e-5, atol=1e-7)
    vmapped = jax.vmap(lambda g: tx.update(g, tx.init(g), g)[0])(stacked)
    chex.assert_trees_all_close(together, vmapped, rtol=1e-5, atol=1e-7)

  def test_log_sign_features(self):
    g = jnp.array([1.0, -np.exp(-2.0), 1e-4, -1e-5, 0.0])
    feats = np.asarray(base.log_sign_features(g, 5.0))
    np.testing.assert_allclose(feats[0], [0.0, -0.4, -1.0, -1.0, -1.0], atol=1e-6)
    np.testing.assert_allclose(feats[1], [1.0, -1.0, np.exp(5) * 1e-4, -np.exp(5) * 1e-5, 0.0],
                               rtol=1e-5)

  def test_l2o_dm_step_matches_a_numpy_lstm(self):
    lopt = optimizers.L2ODM(hidden_size=3, num_layers=2)
    meta_params = jax.tree.map(lambda x: x + 0.1, lopt.init(jax.random.key(2)))  # non-zero biases
    g = np.array([0.5, -0.02, 1e-4], np.float32)
    update, state = lopt.step(meta_params, jnp.asarray(g), lopt.init_state(3))

    x = np.asarray(base.log_sign_features(jnp.asarray(g), 5.0))
    for layer in range(2):
      w, b = np.asarray(meta_params["lstm"][layer]["w"]), np.asarray(meta_params["lstm"][layer]["b"])
      z = w @ np.concatenate([x, np.zeros((3, 3))]) + b  # previous h = 0
      i, f, gg, o = z[0:3], z[3:6], z[6:9], z[9:12]
      c = _sigmoid(i) * np.tanh(gg)  # previous c = 0
      x = _sigmoid(o) * np.tanh(c)
      np.testing.assert_allclose(state.cell[layer], c, rtol=1e-5, atol=1e-6)
    expected = (np.asarray(meta_params["out_w"]) @ x + np.asarray(meta_params["out_b"]))[0] * 0.1
    np.testing.assert_allclose(update, expected, rtol=1e-5, atol=1e-7)

  def test_rnnprop_matches_numpy_over_several_steps(self):
    lopt = optimizers.RNNProp(hidden_size=3, num_layers=2, input_size=4)
    meta_params = jax.tree.map(lambda x: x + 0.1, lopt.init(jax.random.key(5)))
    grads = np.array([[0.5, -0.02, 1e-4, 0.0], [0.4, 0.03, -2e-4, 0.0],
                      [-0.1, 0.01, 1e-4, 0.0]], np.float32)
    state = lopt.init_state(4)
    p = jax.tree.map(np.asarray, meta_params)
    m, v = np.zeros(4), np.zeros(4)
    h, c = [np.zeros((3, 4))] * 2, [np.zeros((3, 4))] * 2
    for t, g in enumerate(grads, start=1):
      update, state = lopt.step(meta_params, jnp.asarray(g), state)
      m = 0.95 * m + 0.05 * g
      v = 0.95 * v + 0.05 * g**2
      scale = 1.0 / (np.sqrt(v / (1 - 0.95**t)) + 1e-8)
      z = p["input_w"] @ np.stack([m / (1 - 0.95**t) * scale, g * scale]) + p["input_b"]
      x = np.where(z > 0, z, np.expm1(z))  # ELU
      for layer in range(2):
        w, b = p["lstm"][layer]["w"], p["lstm"][layer]["b"]
        gates = w @ np.concatenate([x, h[layer]]) + b
        i, f, gg, o = np.split(gates, 4)
        c[layer] = _sigmoid(f) * c[layer] + _sigmoid(i) * np.tanh(gg)
        h[layer] = x = _sigmoid(o) * np.tanh(c[layer])
      expected = 0.1 * np.tanh(p["out_w"] @ x + p["out_b"])[0]
      np.testing.assert_allclose(update, expected, rtol=1e-5, atol=1e-7)
      np.testing.assert_allclose(state.cell[1], c[1], rtol=1e-5, atol=1e-6)
    self.assertTrue(np.isfinite(float(update[3])))  # a zero gradient: 0 / (0 + eps) inputs
    self.assertLessEqual(float(jnp.max(jnp.abs(update))), 0.1)  # bounded by output_scale

  def test_forget_gate_bias_starts_at_one(self):
    meta_params = optimizers.L2ODM().init(jax.random.key(0))
    b = np.asarray(meta_params["lstm"][0]["b"])[:, 0]
    np.testing.assert_array_equal(b[20:40], 1.0)
    np.testing.assert_array_equal(np.delete(b, np.s_[20:40]), 0.0)

  def test_l2o_scale_matches_numpy_over_several_steps(self):
    lopt = optimizers.L2OScale(coord_hidden=3, tensor_hidden=4, global_hidden=2,
                               timescales=(0.5, 0.9), initial_learning_rate=0.01)
    meta_params = jax.tree.map(lambda x: x + 0.1, lopt.init(jax.random.key(7)))
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), meta_params)
    sizes = (3, 2)  # two tensors: coordinates 0-2 and 3-4
    grads = np.array([[0.5, -0.02, 1e-4, 0.3, 0.0], [0.4, 0.03, -2e-4, -0.3, 0.0],
                      [-0.1, 0.01, 1e-4, 0.2, 0.0]], np.float32)
    losses = [2.0, 1.5, 1.2]
    decays = np.array([[0.5], [0.9]])
    segment = np.array([0, 0, 0, 1, 1])

    def gru(q, x, h, context=0.0):
      n = h.shape[0]
      w, b = q["w"], q["b"] + context
      gates = w[:2 * n] @ np.concatenate([x, h]) + b[:2 * n]
      z, r = _sigmoid(gates[:n]), _sigmoid(gates[n:])
      cand = np.tanh(w[2 * n:, :x.shape[0]] @ x + w[2 * n:, x.shape[0]:] @ (r * h) + b[2 * n:])
      return (1 - z) * h + z * cand

    m = v = np.zeros((2, 5))
    log_lr = np.full(5, np.log(0.01))
    hc, ht, hg = np.zeros((3, 5)), np.zeros((4, 2)), np.zeros((2, 1))
    state = lopt.init_state(5, sizes)
    for t, (g, loss) in enumerate(zip(grads, losses), start=1):
      update, state = lopt.step(meta_params, jnp.asarray(g), state, sizes, jnp.float32(loss))
      m = decays * m + (1 - decays) * g
      v = decays * v + (1 - decays) * g.astype(np.float64)**2
      m_hat, v_hat = m / (1 - decays**t), v / (1 - decays**t)
      log_v = np.log(v_hat + 1e-12)
      features = np.concatenate([m_hat / np.sqrt(v_hat + 1e-12), log_v - log_v.mean(0)])
      hc = gru(p["coord_gru"], features, hc, (p["tensor_to_coord"] @ ht)[:, segment])
      out = p["out_w"] @ hc + p["out_b"]
      log_lr = np.clip(log_lr + out[1], -16.0, 0.0)
      expected = np.exp(log_lr) * out[0]
      pooled = np.stack([hc[:, :3].mean(1), hc[:, 3:].mean(1)], axis=1)
      ht = gru(p["tensor_gru"], pooled, ht, p["global_to_tensor"] @ hg)
      global_in = np.concatenate([ht.mean(1, keepdims=True), [[np.log(loss / losses[0])]]])
      hg = gru(p["global_gru"], global_in, hg)
      np.testing.assert_allclose(update, expected, rtol=2e-5, atol=1e-8)
      np.testing.assert_allclose(state.tensor_hidden, ht, rtol=1e-5, atol=1e-7)
      np.testing.assert_allclose(state.global_hidden, hg, rtol=1e-5, atol=1e-7)
    self.assertEqual(float(state.initial_loss), 2.0)

  def test_l2o_scale_sees_other_tensors_and_the_loss(self):
    # Not coordinatewise: the same gradients on one leaf give a different fourth
    # step when another leaf (or the loss) differs. Information climbs one level
    # per step: coordinate -> tensor -> global -> tensor -> coordinate.
    lopt = optimizers.L2OScale()
    tx = lopt.transform(lopt.init(jax.random.key(3)))

    def fourth_step(other, power):  # losses 1, 2^-power, 3^-power, ...
      g = {"a": jnp.array([0.3, -0.1]), "b": other}
      state = tx.init(g)
      for i in range(4):
        update, state = tx.update(g, state, g, loss=jnp.float32((i + 1.0)**-power))
      return np.asarray(update["a"])

    reference = fourth_step(jnp.array([0.2]), 1.0)
    self.assertGreater(np.abs(reference - fourth_step(jnp.array([-5.0]), 1.0)).max(), 1e-9)
    self.assertGreater(np.abs(reference - fourth_step(jnp.array([0.2]), 2.0)).max(), 1e-9)
    np.testing.assert_array_equal(reference, fourth_step(jnp.array([0.2]), 1.0))

  def test_l2o_scale_rejects_bad_settings(self):
    for kwargs, pattern in (({"timescales": ()}, "timescales"),
                            ({"timescales": (0.5, 1.0)}, "timescales"),
                            ({"log_lr_range": (0.0, -1.0)}, "log_lr_range"),
                            ({"initial_learning_rate": 10.0}, "outside"),
                            ({"coord_hidden": 0}, "coord_hidden")):
      with self.assertRaisesRegex(ValueError, pattern):
        optimizers.L2OScale(**kwargs)
    with self.assertRaisesRegex(ValueError, "add up to 4, not to the 5"):
      optimizers.L2OScale().init_state(5, (2, 2))


class RegistryTest(parameterized.TestCase):

  def test_learned_by_name(self):
    self.assertEqual(optimizers.learned("l2o_dm", hidden_size=8), optimizers.L2ODM(hidden_size=8))
    self.assertSameElements(optimizers.learned_names(),
                            ["l2o_dm", "rnnprop", "l2o_scale", "mlp_lopt"])

  @parameterized.parameters(*optimizers.learned_names())
  def test_every_registered_architecture_follows_the_protocol(self, name):
    lopt = optimizers.learned(name)
    self.assertIsInstance(lopt, optimizers.LearnedOptimizer)
    self.assertEqual(lopt.name, name)
    hash(lopt)  # a static argument of jitted functions
    # Its hyper-parameters are JSON values that rebuild it (exports rely on this).
    hparams = json.loads(json.dumps(base.architecture_hparams(lopt)))
    self.assertEqual(optimizers.learned(name, **{
        k: tuple(v) if isinstance(v, list) else v for k, v in hparams.items()}), lopt)

  def test_protocol_names_a_missing_method(self):
    class NoStep:
      name, coordinatewise = "x", True
      init = init_state = transform = lambda self, *a: None

    self.assertNotIsInstance(NoStep(), optimizers.LearnedOptimizer)

  @parameterized.parameters(
      ("velo", {},
       "unknown learned optimizer 'velo'; accepted: l2o_dm, rnnprop, l2o_scale, mlp_lopt"),
      ("l2o_dm", {"width": 3}, "takes no hyper-parameter 'width'; accepted: hidden_size"),
      ("l2o_dm", {"hidden_size": 0}, "hidden_size must be a positive integer"),
      ("mlp_lopt", {"decays": (0.5, 1.5)}, "decays must be non-empty, each in"),
  )
  def test_bad_architecture(self, name, hparams, message):
    with self.assertRaisesRegex(optimizers.OptimizerError, message):
      optimizers.learned(name, **hparams)


if __name__ == "__main__":
  absltest.main()
