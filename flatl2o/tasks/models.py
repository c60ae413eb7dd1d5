"""Flax optimizee models. One initialisation everywhere: Glorot-uniform weights, zero biases.

Glorot rather than the classic L2O N(0, 0.01): with the small normal init the
sigmoid MLP sits at loss ln(10) and meta-training never starts (docs/science.md,
"Findings behind the defaults").
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

KERNEL_INIT = nn.initializers.glorot_uniform()
BIAS_INIT = nn.initializers.zeros

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": nn.sigmoid,
    "relu": nn.relu,
    "tanh": jnp.tanh,
}


class MLP(nn.Module):
  """Flattens the input, then `hidden_sizes` dense layers and a linear read-out."""

  hidden_sizes: Sequence[int]
  num_classes: int
  activation: str = "sigmoid"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = ACTIVATIONS[self.activation]
    x = x.reshape(x.shape[0], -1)
    for width in self.hidden_sizes:
      x = act(nn.Dense(width, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)(x))
    return nn.Dense(self.num_classes, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)(x)


class ConvNet(nn.Module):
  """3x3x16 conv, 2x2 max-pool, 5x5x32 conv, 2x2 max-pool (ReLU), dense read-out."""

  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for features, size in ((16, 3), (32, 5)):
      x = nn.Conv(features, (size, size), padding="SAME", kernel_init=KERNEL_INIT,
                  bias_init=BIAS_INIT)(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)(x)
