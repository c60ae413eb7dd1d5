"""L2O-Scale: the hierarchical RNN optimizer of Wichrowska et al. (2017).

Three GRU levels share information across the coordinates of a model:

  coordinate level  a small GRU per coordinate (`coord_hidden` units), the
                    same weights for every coordinate;
  tensor level      a GRU per tensor (pytree leaf), fed the mean of its
                    coordinates' hidden states;
  global level      one GRU fed the mean of the tensor states and the
                    relative log training loss `log(f_t / f_0)` (from `loss=`).

Each level's previous output enters the level below as a bias of its gates, so
a coordinate's step depends on its tensor and on the whole model. Per
coordinate and timescale k (decays `timescales`), with bias correction:

  m_k <- b_k m_k + (1 - b_k) g,   v_k <- b_k v_k + (1 - b_k) g^2
  inputs: m_k / sqrt(v_k)          (momentum, RMS-normalised at its timescale)
          log v_k - mean_k log v_k (relative log gradient magnitude)

From the new coordinate state h the network reads a direction d = w_d . h + b_d
and a change of the per-coordinate log learning rate, kept in the state:

  log_lr <- clip(log_lr + w_l . h + b_l, log_lr_range)
  update  = exp(log_lr) * d

The inputs are invariant to rescaling the objective, and the learning rate is
per coordinate and adapts over time: the paper's route to generalising to
larger models and longer horizons. Not coordinatewise (a coordinate's update
depends on its tensor and the model), so meta-training vmaps the meta-batch;
the meta-loss the paper uses, and this library's binaries pick for it, is the
log-ratio form (`preferred_meta_loss`).

Without `loss=` the global level sees a loss feature of zero (the optax
update still works in code that does not pass the loss).

Example:
  >>> lopt = flatl2o.optimizers.L2OScale()
  >>> tx = lopt.transform(lopt.init(jax.random.key(0)))
  >>> state = tx.init(params)
  >>> updates, state = tx.update(grads, state, params, loss=loss)

References:
  Wichrowska, Maheswaranathan, Hoffman, Colmenarejo, Denil, de Freitas and
  Sohl-Dickstein, "Learned Optimizers that Scale and Generalize", ICML 2017.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flatl2o.optimizers import base
from flatl2o.optimizers import registry


class L2OScaleState(NamedTuple):
  """Optax state of L2O-Scale (coordinates last; T tensors).

  Attributes:
    first_moment: `[K, N]` momenta, one row per timescale.
    second_moment: `[K, N]` mean squared gradients, one row per timescale.
    log_lr: `[N]` per-coordinate log learning rate.
    coord_hidden: `[coord_hidden, N]` coordinate-level GRU state.
    tensor_hidden: `[tensor_hidden, T]` tensor-level GRU state.
    global_hidden: `[global_hidden, 1]` global GRU state.
    initial_loss: the training loss at the first update (for `log(f_t / f_0)`).
    count: number of updates so far (for bias correction).
  """

  first_moment: jax.Array
  second_moment: jax.Array
  log_lr: jax.Array
  coord_hidden: jax.Array
  tensor_hidden: jax.Array
  global_hidden: jax.Array
  initial_loss: jax.Array
  count: jax.Array


def _gru_init(key: jax.Array, input_size: int, hidden_size: int) -> dict:
  """GRU weights: `w: [3H, in + H]` (gates z, r, then candidate), uniform(+-1/sqrt(H))."""
  scale = 1.0 / np.sqrt(hidden_size)
  return {"w": base.uniform(key, (3 * hidden_size, input_size + hidden_size), scale),
          "b": jnp.zeros((3 * hidden_size, 1), jnp.float32)}


def _gru(p: dict, x: jax.Array, h: jax.Array, context: jax.Array | float = 0.0) -> jax.Array:
  """A GRU step on coordinates-last arrays; `context` (`[3H, N]` or broadcastable) adds to the gates.

  z = sigmoid(Wz [x; h] + bz + cz), r = sigmoid(Wr [x; h] + br + cr),
  h~ = tanh(Wx x + Wh (r * h) + bh + ch), h' = (1 - z) h + z h~.
  """
  size = h.shape[0]
  num_in = x.shape[0]
  w, b = p["w"], p["b"] + context
  gates = w[:2 * size] @ jnp.concatenate([x, h], axis=0) + b[:2 * size]
  z, r = jnp.split(jax.nn.sigmoid(gates), 2, axis=0)
  candidate = jnp.tanh(w[2 * size:, :num_in] @ x + w[2 * size:, num_in:] @ (r * h)
                       + b[2 * size:])
  return (1.0 - z) * h + z * candidate


@dataclasses.dataclass(frozen=True)
class L2OScale(base.LearnedOptimizer):
  """Hyper-parameters of the hierarchical RNN optimizer.

  Attributes:
    coord_hidden: units of the coordinate-level GRU (10 in the paper).
    tensor_hidden: units of the tensor-level GRU (20 in the paper).
    global_hidden: units of the global GRU (20 in the paper).
    timescales: decays of the momenta and RMS estimates, one input pair each.
    initial_learning_rate: the per-coordinate learning rate at the first step.
    log_lr_range: bounds of the log learning rate (keeps steps finite).
    epsilon: added to the second moments before dividing and taking logs.
  """

  coord_hidden: int = 10
  tensor_hidden: int = 20
  global_hidden: int = 20
  timescales: tuple[float, ...] = (0.5, 0.9, 0.99)
  initial_learning_rate: float = 1e-3
  log_lr_range: tuple[float, float] = (-16.0, 0.0)
  epsilon: float = 1e-12

  name = "l2o_scale"
  coordinatewise = False  # tensor and global levels pool over coordinates
  preferred_meta_loss = "log_ratio"  # what Wichrowska et al. meta-train it with

  def __post_init__(self):
    base.check_positive_int(self, "coord_hidden", "tensor_hidden", "global_hidden")
    object.__setattr__(self, "timescales", tuple(self.timescales))
    object.__setattr__(self, "log_lr_range", tuple(self.log_lr_range))
    if not self.timescales or not all(
        isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in self.timescales):
      raise ValueError("L2OScale.timescales must be a non-empty list of decays in [0, 1), got "
                       f"{list(self.timescales)!r}")
    low_high = self.log_lr_range
    if (len(low_high) != 2 or not all(isinstance(v, (int, float)) for v in low_high)
        or not low_high[0] < low_high[1]):
      raise ValueError("L2OScale.log_lr_range must be two increasing numbers [low, high], got "
                       f"{list(low_high)!r}")
    for field in ("initial_learning_rate", "epsilon"):
      base.check_number(self, field, lambda v: v > 0, "positive")
    if (not isinstance(self.initial_learning_rate, jax.core.Tracer)
        and not low_high[0] <= math.log(self.initial_learning_rate) <= low_high[1]):
      raise ValueError(f"L2OScale.initial_learning_rate {self.initial_learning_rate} lies "
                       f"outside exp(log_lr_range) = [{math.exp(low_high[0]):.3g}, "
                       f"{math.exp(low_high[1]):.3g}]")

  @property
  def _num_features(self) -> int:
    return 2 * len(self.timescales)

  def init(self, key: jax.Array) -> dict:
    """Meta-parameters: uniform(+-1/sqrt(fan-in)) weights, zero biases.

    Args:
      key: PRNG key for the weights.

    Returns:
      A dict of float32 arrays: the GRUs `coord_gru`, `tensor_gru` and `global_gru` (each
      `w: [3H, in + H]`, `b: [3H, 1]`), the gate-bias maps `tensor_to_coord` `[3Hc, Ht]` and
      `global_to_tensor` `[3Ht, Hg]`, and the read-out `out_w` `[2, Hc]`, `out_b` `[2, 1]`.
    """
    hc, ht, hg = self.coord_hidden, self.tensor_hidden, self.global_hidden
    keys = jax.random.split(key, 6)
    return {
        "coord_gru": _gru_init(keys[0], self._num_features, hc),
        "tensor_gru": _gru_init(keys[1], hc, ht),
        "global_gru": _gru_init(keys[2], ht + 1, hg),
        # Higher level -> gate biases of the level below.
        "tensor_to_coord": base.uniform(keys[3], (3 * hc, ht), 1.0 / np.sqrt(ht)),
        "global_to_tensor": base.uniform(keys[4], (3 * ht, hg), 1.0 / np.sqrt(hg)),
        # Read-outs of the coordinate state: row 0 the direction, row 1 the log-lr change.
        "out_w": base.uniform(keys[5], (2, hc), 1.0 / np.sqrt(hc)),
        "out_b": jnp.zeros((2, 1), jnp.float32),
    }

  def init_state(self, num_coords: int,
                 tensor_sizes: Sequence[int] | None = None) -> L2OScaleState:
    """State for `num_coords` coordinates split into tensors of `tensor_sizes` (default one).

    Args:
      num_coords: N, the number of coordinates.
      tensor_sizes: sizes of the tensors the N coordinates split into, in order; they must
        add up to N (ValueError otherwise). None: one tensor of N coordinates.

    Returns:
      An `L2OScaleState` (float32) with zero moments, hidden states, `initial_loss` and
      `count`, and every `log_lr` at log(`initial_learning_rate`).
    """
    sizes = _sizes(num_coords, tensor_sizes)
    k = len(self.timescales)
    zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
    return L2OScaleState(
        first_moment=zeros(k, num_coords), second_moment=zeros(k, num_coords),
        log_lr=jnp.full((num_coords,), jnp.log(self.initial_learning_rate), jnp.float32),
        coord_hidden=zeros(self.coord_hidden, num_coords),
        tensor_hidden=zeros(self.tensor_hidden, len(sizes)),
        global_hidden=zeros(self.global_hidden, 1),
        initial_loss=zeros(), count=jnp.zeros((), jnp.int32))

  def step(self, meta_params: dict, grad: jax.Array, state: L2OScaleState,
           tensor_sizes: Sequence[int] | None = None,
           loss: jax.Array | None = None) -> tuple[jax.Array, L2OScaleState]:
    """One step on a flat gradient `[N]` made of tensors of `tensor_sizes`; returns `[N]`.

    Args:
      meta_params: the meta-parameters, as from `init`.
      grad: the flat gradient `[N]`; it is cast to the state's dtype.
      state: the `L2OScaleState` from `init_state` or from the previous step.
      tensor_sizes: sizes of the tensors making up `grad`, in order; they must add up to N
        (ValueError otherwise). None: one tensor.
      loss: the current training loss, for the global level's `log(f_t / f_0)` feature
        (`f_0` is the loss given at the first step); None feeds a zero feature.

    Returns:
      `(update, new_state)`: the update `[N]`, `exp(log_lr) * d`, and the new
      `L2OScaleState`.
    """
    num_coords = grad.shape[0]
    sizes = _sizes(num_coords, tensor_sizes)
    num_tensors = len(sizes)
    segment = np.repeat(np.arange(num_tensors), sizes)  # static: shapes are static
    dtype = state.first_moment.dtype
    grad = grad.astype(dtype)
    decays = jnp.asarray(self.timescales, dtype)[:, None]

    count = state.count + 1
    first = decays * state.first_moment + (1.0 - decays) * grad
    second = decays * state.second_moment + (1.0 - decays) * grad**2
    correction = 1.0 - decays ** count.astype(dtype)
    m_hat, v_hat = first / correction, second / correction
    log_v = jnp.log(v_hat + self.epsilon)
    features = jnp.concatenate([m_hat * jax.lax.rsqrt(v_hat + self.epsilon),
                                log_v - jnp.mean(log_v, axis=0, keepdims=True)], axis=0)

    # Coordinate level, biased by the tensor level's previous state.
    tensor_bias = meta_params["tensor_to_coord"] @ state.tensor_hidden  # [3Hc, T]
    coord_hidden = _gru(meta_params["coord_gru"], features, state.coord_hidden,
                        jnp.take(tensor_bias, segment, axis=1) if num_tensors else 0.0)
    out = meta_params["out_w"] @ coord_hidden + meta_params["out_b"]
    low, high = self.log_lr_range
    log_lr = jnp.clip(state.log_lr + out[1], low, high)
    update = jnp.exp(log_lr) * out[0]

    # Tensor level: mean coordinate state per tensor, biased by the global level.
    counts = jnp.maximum(jnp.asarray(sizes, dtype), 1.0)
    tensor_input = jax.ops.segment_sum(coord_hidden.T, segment, num_segments=num_tensors).T
    tensor_input = tensor_input / counts
    tensor_hidden = _gru(meta_params["tensor_gru"], tensor_input, state.tensor_hidden,
                         meta_params["global_to_tensor"] @ state.global_hidden)

    # Global level: mean tensor state and the relative log training loss.
    if loss is None:
      loss_feature, initial_loss = jnp.zeros((), dtype), state.initial_loss
    else:
      loss = jnp.maximum(jnp.asarray(loss, dtype), 1e-30)
      initial_loss = jnp.where(state.count == 0, loss, state.initial_loss)
      loss_feature = jnp.log(loss) - jnp.log(jnp.maximum(initial_loss, 1e-30))
    pooled = jnp.sum(tensor_hidden, axis=1, keepdims=True) / max(num_tensors, 1)
    global_input = jnp.concatenate([pooled, jnp.reshape(loss_feature, (1, 1))], axis=0)
    global_hidden = _gru(meta_params["global_gru"], global_input, state.global_hidden)

    return update, L2OScaleState(first_moment=first, second_moment=second, log_lr=log_lr,
                                 coord_hidden=coord_hidden, tensor_hidden=tensor_hidden,
                                 global_hidden=global_hidden, initial_loss=initial_loss,
                                 count=count)

  def transform(self, meta_params: dict) -> optax.GradientTransformationExtraArgs:
    """The optax transformation: pytree leaves are the tensors; reads `loss=` when given.

    Args:
      meta_params: the meta-parameters, as from `init`.

    Returns:
      An `optax.GradientTransformationExtraArgs`; its `update` passes `loss=` to `step` and
      ignores other extra arguments.
    """
    dtype = base.meta_dtype(meta_params)

    def init_fn(params):
      base.check_float_tree(params)
      sizes = [int(np.prod(jnp.shape(leaf))) for leaf in jax.tree.leaves(params)]
      return base.cast_state(self.init_state(sum(sizes), sizes), dtype)

    def update_fn(updates, state, params=None, *, loss=None, **extra_args):
      del params, extra_args
      base.check_float_tree(updates, "updates")
      sizes = [int(np.prod(jnp.shape(leaf))) for leaf in jax.tree.leaves(updates)]
      grad, unflatten = base.flatten(updates)
      step, new_state = self.step(meta_params, grad, state, sizes, loss)
      return unflatten(step), base.keep_dtypes(new_state, state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _sizes(num_coords: int, tensor_sizes: Sequence[int] | None) -> tuple[int, ...]:
  if tensor_sizes is None:
    return (num_coords,)
  sizes = tuple(int(s) for s in tensor_sizes)
  if sum(sizes) != num_coords:
    raise ValueError(f"tensor_sizes {list(sizes)} add up to {sum(sizes)}, not to the "
                     f"{num_coords} coordinates of the gradient")
  return sizes


registry.register("l2o_scale", L2OScale)
