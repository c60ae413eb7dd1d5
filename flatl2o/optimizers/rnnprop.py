"""RNNprop: the coordinatewise LSTM optimizer of Lv et al. (2017) on Adam-normalised inputs.

Per coordinate, with gradient g and Adam-style moments (beta1 = beta2 = 0.95):

  m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
  m_hat = m / (1 - b1^t),   v_hat = v / (1 - b2^t)
  x = ELU(W_in [m_hat / sqrt(v_hat), g / sqrt(v_hat)] + b_in)     # 20 units
  (h, c) = LSTM_2(x, (h, c))                                       # 2 x 20
  update = output_scale * tanh(w_out . h + b_out)                  # output_scale = 0.1

Both inputs are invariant to a rescaling of the objective, and the tanh bounds
every step by `output_scale`: the two properties the paper credits for
generalising to longer horizons and other optimizees. The per-coordinate state
is kept as `[hidden_size, N]` arrays, coordinates last, as in L2O-DM.

Example:
  >>> lopt = flatl2o.optimizers.RNNProp()
  >>> tx = lopt.transform(lopt.init(jax.random.key(0)))
  >>> state = tx.init(params)
  >>> updates, state = tx.update(grads, state, params)

References:
  Lv, Jiang and Li, "Learning Gradient Descent: Better Generalization and
  Longer Horizons", ICML 2017.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flatl2o.optimizers import base
from flatl2o.optimizers import registry


class RNNPropState(NamedTuple):
  """Optax state of RNNprop.

  Attributes:
    first_moment: `[N]` moving average of the gradient (beta1).
    second_moment: `[N]` moving average of the squared gradient (beta2).
    count: number of updates so far (for bias correction).
    hidden: per layer, the LSTM output `h`, shape `[hidden_size, N]`.
    cell: per layer, the LSTM cell `c`, shape `[hidden_size, N]`.
  """

  first_moment: jax.Array
  second_moment: jax.Array
  count: jax.Array
  hidden: tuple[jax.Array, ...]
  cell: tuple[jax.Array, ...]


@dataclasses.dataclass(frozen=True)
class RNNProp(base.LearnedOptimizer):
  """Hyper-parameters of RNNprop.

  Attributes:
    hidden_size: LSTM units per layer (20 in the paper).
    num_layers: stacked LSTM layers (2 in the paper).
    input_size: units of the linear + ELU input layer (20 in the paper).
    beta1: decay of the first moment (0.95 in the paper).
    beta2: decay of the second moment (0.95 in the paper).
    output_scale: alpha, the bound of every step (0.1 in the paper).
    epsilon: added to sqrt(v_hat) so zero gradients give zero inputs.
  """

  hidden_size: int = 20
  num_layers: int = 2
  input_size: int = 20
  beta1: float = 0.95
  beta2: float = 0.95
  output_scale: float = 0.1
  epsilon: float = 1e-8

  name = "rnnprop"
  coordinatewise = True  # each coordinate's update depends only on its own history

  def __post_init__(self):
    base.check_positive_int(self, "hidden_size", "num_layers", "input_size")
    for field in ("beta1", "beta2"):
      base.check_number(self, field, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
    for field in ("output_scale", "epsilon"):
      base.check_number(self, field, lambda v: v > 0, "positive")

  def init(self, key: jax.Array) -> dict:
    """Meta-parameters: uniform(+-1/sqrt(fan-in)) weights, forget-gate bias 1.

    Args:
      key: PRNG key for the weights.

    Returns:
      A dict of float32 arrays: `input_w` `[input_size, 2]`, `input_b` `[input_size, 1]`,
      `lstm` (as from `base.lstm_init`), `out_w` `[1, H]` and `out_b` `[1, 1]`.
    """
    h = self.hidden_size
    input_key, lstm_key, out_key = jax.random.split(key, 3)
    return {"input_w": base.uniform(input_key, (self.input_size, 2), 1.0 / np.sqrt(2.0)),
            "input_b": jnp.zeros((self.input_size, 1), jnp.float32),
            "lstm": base.lstm_init(lstm_key, self.input_size, h, self.num_layers),
            "out_w": base.uniform(out_key, (1, h), 1.0 / np.sqrt(h)),
            "out_b": jnp.zeros((1, 1), jnp.float32)}

  def init_state(self, num_coords: int) -> RNNPropState:
    """Zero moments, count and LSTM state for `num_coords` coordinates.

    Args:
      num_coords: N, the number of coordinates.

    Returns:
      An `RNNPropState` of zeros: moments `[N]` (float32), `count` 0, and per layer
      `hidden` and `cell` `[hidden_size, N]` (float32).
    """
    zeros = tuple(jnp.zeros((self.hidden_size, num_coords), jnp.float32)
                  for _ in range(self.num_layers))
    return RNNPropState(first_moment=jnp.zeros((num_coords,), jnp.float32),
                        second_moment=jnp.zeros((num_coords,), jnp.float32),
                        count=jnp.zeros((), jnp.int32), hidden=zeros, cell=zeros)

  def step(self, meta_params: dict, grad: jax.Array,
           state: RNNPropState) -> tuple[jax.Array, RNNPropState]:
    """One step on a flat gradient `[N]`; returns the update `[N]`.

    Args:
      meta_params: the meta-parameters, as from `init`.
      grad: the flat gradient `[N]`; it is cast to the state's dtype.
      state: the `RNNPropState` from `init_state` or from the previous step.

    Returns:
      `(update, new_state)`: the update `[N]`, `output_scale * tanh(w_out . h + b_out)`, and
      the new `RNNPropState`.
    """
    dtype = state.first_moment.dtype
    grad = grad.astype(dtype)
    first = self.beta1 * state.first_moment + (1.0 - self.beta1) * grad
    second = self.beta2 * state.second_moment + (1.0 - self.beta2) * grad**2
    count = state.count + 1
    t = count.astype(dtype)
    m_hat = first / (1.0 - self.beta1**t)
    scale = 1.0 / (jnp.sqrt(second / (1.0 - self.beta2**t)) + self.epsilon)
    features = jnp.stack([m_hat * scale, grad * scale])
    x = jax.nn.elu(meta_params["input_w"] @ features + meta_params["input_b"])
    x, hidden, cell = base.lstm_stack(meta_params["lstm"], x, state.hidden, state.cell)
    update = self.output_scale * jnp.tanh(meta_params["out_w"] @ x + meta_params["out_b"])[0]
    return update, RNNPropState(first_moment=first, second_moment=second, count=count,
                                hidden=hidden, cell=cell)

  def transform(self, meta_params: dict) -> optax.GradientTransformationExtraArgs:
    """The optax transformation that applies this network with `meta_params`.

    Args:
      meta_params: the meta-parameters, as from `init`.

    Returns:
      An `optax.GradientTransformationExtraArgs` (`base.coordinatewise_transform`).
    """
    return base.coordinatewise_transform(self, meta_params)


registry.register("rnnprop", RNNProp)
