"""Not a test file: a learned optimizer defined outside flatl2o, as a user would write one.

tests/test_registry.py imports it (in its own process and in fresh ones) to
check that a user's registered architecture meta-trains, exports and loads.
Importing this module registers it, the way the built-ins register themselves.

Per coordinate, with momentum m <- decay * m + g:

  update = -exp(log_lr) * (w[0] * g + w[1] * m)

meta_params = {"log_lr": [], "w": [2]}: three numbers that meta-training fits.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

import flatl2o
from flatl2o.optimizers import base

NAME = "user_momentum"


@dataclasses.dataclass(frozen=True)
class UserMomentum(base.LearnedOptimizer):
  """A learned mix of the gradient and its momentum, with a learned step size.

  Attributes:
    decay: the momentum's decay.
    initial_learning_rate: exp(log_lr) before meta-training.
  """

  decay: float = 0.9
  initial_learning_rate: float = 0.05

  name = NAME
  coordinatewise = True

  def init(self, key: jax.Array) -> dict:
    return {"log_lr": jnp.log(jnp.float32(self.initial_learning_rate)),
            "w": jnp.array([1.0, 0.0], jnp.float32) + 0.01 * jax.random.normal(key, (2,))}

  def init_state(self, num_coords: int) -> jax.Array:
    return jnp.zeros((num_coords,), jnp.float32)

  def step(self, meta_params: dict, grad: jax.Array,
           state: jax.Array) -> tuple[jax.Array, jax.Array]:
    momentum = self.decay * state + grad
    w = meta_params["w"]
    return -jnp.exp(meta_params["log_lr"]) * (w[0] * grad + w[1] * momentum), momentum

  def transform(self, meta_params: dict) -> optax.GradientTransformationExtraArgs:
    return base.coordinatewise_transform(self, meta_params)


flatl2o.optimizers.register(NAME, UserMomentum)
