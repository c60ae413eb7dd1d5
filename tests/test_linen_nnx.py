"""A learned optimizer in a Flax linen loop and in an nnx.Optimizer loop: the same training
run when both start from the same parameters and see the same minibatches.

The cause of quickstart.ipynb's linen/nnx difference (issue 21: the pretrained
l2o_dm_hessian reached 0.919 in one loop and 0.942 in the other): linen's `init` and
`nnx.Rngs` draw different initial parameters from one key, so the two loops were two seeds.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized
from flax import nnx
from flax.training import train_state

import flatl2o

STEPS, BATCH = 30, 32


class LinenMLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    hidden = nn.sigmoid(nn.Dense(16)(x))  # Dense_0 (created first), then Dense_1
    return nn.Dense(10)(hidden)


class NNXMLP(nnx.Module):

  def __init__(self, *, rngs):
    self.hidden = nnx.Linear(64, 16, rngs=rngs)
    self.out = nnx.Linear(16, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.sigmoid(self.hidden(x)))


def _loss(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


class LinenNnxTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    data = flatl2o.tasks.get("mlp_sigmoid", "digits").data
    x, cls.y = data.split("train")
    cls.x = x.reshape(x.shape[0], -1)
    cls.init_key, cls.data_key = jax.random.split(jax.random.key(0))
    cls.linen_init = LinenMLP().init(cls.init_key, cls.x[:1])["params"]

  def _batch(self, t):
    idx = jax.random.randint(jax.random.fold_in(self.data_key, t), (BATCH,), 0, self.x.shape[0])
    return self.x[idx], self.y[idx]

  def _linen(self, tx):
    state = train_state.TrainState.create(apply_fn=LinenMLP().apply, params=self.linen_init,
                                          tx=tx)
    step = jax.jit(lambda state, x, y: state.apply_gradients(grads=jax.grad(
        lambda p: _loss(state.apply_fn({"params": p}, x), y))(state.params)))
    for t in range(STEPS):
      state = step(state, *self._batch(t))
    return state.params

  def _nnx(self, tx, same_start=True):
    model = NNXMLP(rngs=nnx.Rngs(params=self.init_key))
    if same_start:
      for layer, name in ((model.hidden, "Dense_0"), (model.out, "Dense_1")):
        layer.kernel.value = self.linen_init[name]["kernel"]
        layer.bias.value = self.linen_init[name]["bias"]
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
      grads = nnx.grad(lambda m: _loss(m(x), y))(model)
      optimizer.update(model, grads)

    for t in range(STEPS):
      step(model, optimizer, *self._batch(t))
    return {"Dense_0": {"kernel": model.hidden.kernel.value, "bias": model.hidden.bias.value},
            "Dense_1": {"kernel": model.out.kernel.value, "bias": model.out.bias.value}}

  @parameterized.parameters("adam", "pretrained:l2o_dm_hessian", "pretrained:rnnprop")
  def test_same_start_same_batches_same_parameters(self, spec):
    tx = flatl2o.optimizers.resolve(spec)
    linen, nnx_params = self._linen(tx), self._nnx(tx)
    for a, b in zip(jax.tree.leaves(linen), jax.tree.leaves(nnx_params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # and the run moved: the comparison is not of two untouched initialisations
    self.assertGreater(float(jnp.abs(linen["Dense_0"]["kernel"]
                                     - self.linen_init["Dense_0"]["kernel"]).max()), 1e-3)

  def test_the_cause_linen_and_nnx_draw_different_initialisations_from_one_key(self):
    model = NNXMLP(rngs=nnx.Rngs(params=self.init_key))
    self.assertFalse(np.allclose(model.hidden.kernel.value, self.linen_init["Dense_0"]["kernel"]))


if __name__ == "__main__":
  absltest.main()
