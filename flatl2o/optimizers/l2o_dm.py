"""L2O-DM: the coordinatewise two-layer LSTM optimizer of Andrychowicz et al. (2016).

Every coordinate i of the optimizee runs the same LSTM on its own gradient:

  x_i = preprocess(g_i)                     # log|g|/k and sign g (k = 5), or raw g
  (h_i, s_i) = LSTM_2(x_i, s_i; meta_params)
  update_i = output_scale * (w_out . h_i + b_out)

The per-coordinate state is kept as `[hidden_size, N]` arrays (coordinates on
the last, contiguous axis) so each layer is one fused `[4H, in + H] @ [in + H, N]`
matmul; this layout measured about 30% faster on the CPU than `[N, H]`.

Example:
  >>> lopt = flatl2o.optimizers.L2ODM()
  >>> tx = lopt.transform(lopt.init(jax.random.key(0)))
  >>> state = tx.init(params)
  >>> updates, state = tx.update(grads, state, params, loss=loss)

References:
  Andrychowicz et al., "Learning to learn by gradient descent by gradient
  descent", NeurIPS 2016.
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


class L2ODMState(NamedTuple):
  """Optax state of L2O-DM.

  Attributes:
    hidden: per layer, the LSTM output `h`, shape `[hidden_size, N]`.
    cell: per layer, the LSTM cell `c`, shape `[hidden_size, N]`.
  """

  hidden: tuple[jax.Array, ...]
  cell: tuple[jax.Array, ...]


@dataclasses.dataclass(frozen=True)
class L2ODM(base.LearnedOptimizer):
  """Hyper-parameters of the coordinatewise LSTM optimizer.

  Attributes:
    hidden_size: LSTM units per layer (20 in the paper).
    num_layers: stacked LSTM layers (2 in the paper).
    preprocess_k: k of the log-and-sign preprocessing (the original code used
      5); None feeds the raw gradient.
    output_scale: the update is the linear read-out times this (0.1 originally).
  """

  hidden_size: int = 20
  num_layers: int = 2
  preprocess_k: float | None = 5.0
  output_scale: float = 0.1

  name = "l2o_dm"
  coordinatewise = True  # each coordinate's update depends only on its own history

  def __post_init__(self):
    base.check_positive_int(self, "hidden_size", "num_layers")
    if self.preprocess_k is not None:
      base.check_number(self, "preprocess_k", lambda v: v > 0, "positive or None")
    base.check_number(self, "output_scale", lambda v: v > 0, "positive")

  @property
  def _input_size(self) -> int:
    return 1 if self.preprocess_k is None else 2

  def init(self, key: jax.Array) -> dict:
    """Meta-parameters; uniform(+-1/sqrt(H)) weights, forget-gate bias 1.

    Args:
      key: PRNG key for the weights.

    Returns:
      A dict of float32 arrays: `lstm` (per layer `w: [4H, in + H]`, `b: [4H, 1]`; `in` is
      2 with the log-and-sign preprocessing, 1 without, H above the first layer), `out_w`
      `[1, H]` and `out_b` `[1, 1]`.
    """
    h = self.hidden_size
    scale = 1.0 / np.sqrt(h)
    keys = jax.random.split(key, self.num_layers + 1)
    layers = []
    for layer, k in enumerate(keys[:-1]):
      fan_in = (self._input_size if layer == 0 else h) + h
      bias = jnp.zeros((4 * h, 1), jnp.float32).at[h:2 * h].set(1.0)
      layers.append({"w": base.uniform(k, (4 * h, fan_in), scale), "b": bias})
    return {"lstm": layers,
            "out_w": base.uniform(keys[-1], (1, h), scale),
            "out_b": jnp.zeros((1, 1), jnp.float32)}

  def init_state(self, num_coords: int) -> L2ODMState:
    """Zero LSTM state for `num_coords` coordinates.

    Args:
      num_coords: N, the number of coordinates.

    Returns:
      An `L2ODMState` of float32 zeros: per layer, `hidden` and `cell` `[hidden_size, N]`.
    """
    zeros = tuple(jnp.zeros((self.hidden_size, num_coords), jnp.float32)
                  for _ in range(self.num_layers))
    return L2ODMState(hidden=zeros, cell=zeros)

  def step(self, meta_params: dict, grad: jax.Array,
           state: L2ODMState) -> tuple[jax.Array, L2ODMState]:
    """One LSTM step on a flat gradient `[N]`; returns the update `[N]`.

    Args:
      meta_params: the meta-parameters, as from `init`.
      grad: the flat gradient `[N]`.
      state: the `L2ODMState` from `init_state` or from the previous step.

    Returns:
      `(update, new_state)`: the update `[N]` (the linear read-out times `output_scale`) and
      the new `L2ODMState`.
    """
    if self.preprocess_k is None:
      x = grad[None, :]
    else:
      x = base.log_sign_features(grad, self.preprocess_k)
    x, hidden, cell = base.lstm_stack(meta_params["lstm"], x, state.hidden, state.cell)
    update = (meta_params["out_w"] @ x + meta_params["out_b"])[0] * self.output_scale
    return update, L2ODMState(hidden=hidden, cell=cell)

  def transform(self, meta_params: dict) -> optax.GradientTransformationExtraArgs:
    """The optax transformation that applies this network with `meta_params`.

    Args:
      meta_params: the meta-parameters, as from `init`.

    Returns:
      An `optax.GradientTransformationExtraArgs` (`base.coordinatewise_transform`).
    """
    return base.coordinatewise_transform(self, meta_params)


registry.register("l2o_dm", L2ODM)
