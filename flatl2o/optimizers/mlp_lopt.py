"""MLPLOpt: a small per-parameter MLP over momentum features, the cheap learned optimizer.

Per coordinate, with gradient g, momenta m_j <- b_j m_j + (1 - b_j) g at a few
timescales b_j and a second moment v <- b_v v + (1 - b_v) g^2:

  features = [g, m_1, ..., m_J] / sqrt(v_hat)   # second-moment normalised, scale-free
  (d, s) = MLP(features; meta_params)
  update = step_size * d * exp(magnitude_scale * s)

No recurrence beyond the accumulators, so a step costs a few `[hidden, N]`
matmuls; this is the learned optimizer to use on models too big for an LSTM
per coordinate. Like L2O-DM it is purely coordinatewise (no statistics across
coordinates), so a meta-batch of optimizees is simply more coordinates.

References:
  Metz et al., "Understanding and correcting pathologies in the training of
  learned optimizers", ICML 2019 (the per-parameter MLP design).
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


class MLPLOptState(NamedTuple):
  """Optax state of MLPLOpt.

  Attributes:
    momenta: `[len(decays), N]` exponential moving averages of the gradient.
    second_moment: `[N]` moving average of the squared gradient.
    count: number of updates so far (for bias correction).
  """

  momenta: jax.Array
  second_moment: jax.Array
  count: jax.Array


@dataclasses.dataclass(frozen=True)
class MLPLOpt(base.LearnedOptimizer):
  """Hyper-parameters of the per-parameter MLP optimizer.

  Attributes:
    hidden_size: width of each hidden layer.
    num_layers: hidden layers (ReLU).
    decays: momentum timescales.
    second_moment_decay: decay of the squared-gradient average.
    step_size: scale of the update direction.
    magnitude_scale: scale inside the exponential magnitude.
  """

  hidden_size: int = 32
  num_layers: int = 2
  decays: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
  second_moment_decay: float = 0.999
  step_size: float = 0.01
  magnitude_scale: float = 0.01

  name = "mlp_lopt"
  coordinatewise = True  # each coordinate's update depends only on its own history

  def __post_init__(self):
    base.check_positive_int(self, "hidden_size", "num_layers")
    object.__setattr__(self, "decays", tuple(float(d) for d in self.decays))
    if not self.decays or not all(0.0 <= d < 1.0 for d in self.decays):
      raise ValueError(f"MLPLOpt.decays must be non-empty, each in [0, 1); got {self.decays}")
    base.check_number(self, "second_moment_decay", lambda v: 0.0 < v < 1.0,
                      "a number in (0, 1)")
    for field in ("step_size", "magnitude_scale"):
      base.check_number(self, field, lambda v: v > 0, "positive")

  def init(self, key: jax.Array) -> dict:
    """Meta-parameters: uniform(+-sqrt(6 / (fan_in + fan_out))) weights, zero biases.

    Args:
      key: PRNG key for the weights.

    Returns:
      `{"layers": [...]}`, per layer `{"w": [out, in], "b": [out, 1]}` in float32: from the
      `1 + len(decays)` features through `num_layers` hidden layers of `hidden_size` units
      to 2 outputs (the direction d and the magnitude s).
    """
    sizes = [1 + len(self.decays)] + [self.hidden_size] * self.num_layers + [2]
    keys = jax.random.split(key, len(sizes) - 1)
    layers = []
    for k, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:]):
      layers.append({"w": base.uniform(k, (fan_out, fan_in), np.sqrt(6.0 / (fan_in + fan_out))),
                     "b": jnp.zeros((fan_out, 1), jnp.float32)})
    return {"layers": layers}

  def init_state(self, num_coords: int) -> MLPLOptState:
    """Zero accumulators for `num_coords` coordinates.

    Args:
      num_coords: N, the number of coordinates.

    Returns:
      An `MLPLOptState`: float32 zeros `momenta` `[len(decays), N]` and `second_moment`
      `[N]`, and `count` 0.
    """
    return MLPLOptState(
        momenta=jnp.zeros((len(self.decays), num_coords), jnp.float32),
        second_moment=jnp.zeros((num_coords,), jnp.float32),
        count=jnp.zeros((), jnp.int32))

  def step(self, meta_params: dict, grad: jax.Array,
           state: MLPLOptState) -> tuple[jax.Array, MLPLOptState]:
    """One step on a flat gradient `[N]`: update the accumulators, then apply the MLP.

    Args:
      meta_params: the meta-parameters, as from `init`.
      grad: the flat float32 gradient `[N]`.
      state: the `MLPLOptState` from `init_state` or from the previous step.

    Returns:
      `(update, new_state)`: the update `[N]`, `step_size * d * exp(magnitude_scale * s)`,
      and the new `MLPLOptState`.
    """
    decays = jnp.asarray(self.decays, jnp.float32)[:, None]
    momenta = decays * state.momenta + (1.0 - decays) * grad[None, :]
    b = self.second_moment_decay
    second_moment = b * state.second_moment + (1.0 - b) * grad**2
    count = state.count + 1
    v_hat = second_moment / (1.0 - b**count.astype(jnp.float32))
    features = jnp.concatenate([grad[None, :], momenta], axis=0) * jax.lax.rsqrt(v_hat + 1e-16)
    x = features
    layers = meta_params["layers"]
    for p in layers[:-1]:
      x = jax.nn.relu(p["w"] @ x + p["b"])
    out = layers[-1]["w"] @ x + layers[-1]["b"]
    update = self.step_size * out[0] * jnp.exp(self.magnitude_scale * out[1])
    return update, MLPLOptState(momenta=momenta, second_moment=second_moment, count=count)

  def transform(self, meta_params: dict) -> optax.GradientTransformationExtraArgs:
    """The optax transformation that applies this network with `meta_params`.

    Args:
      meta_params: the meta-parameters, as from `init`.

    Returns:
      An `optax.GradientTransformationExtraArgs` (`base.coordinatewise_transform`).
    """
    return base.coordinatewise_transform(self, meta_params)


registry.register("mlp_lopt", MLPLOpt)
