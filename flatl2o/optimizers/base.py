"""The learned-optimizer interface and helpers shared by the architectures.

A learned optimizer is a frozen dataclass of hyper-parameters (the
`LearnedOptimizer` protocol):

  meta_params = lopt.init(key)        # a pytree of arrays: what meta-training fits
  tx = lopt.transform(meta_params)    # an optax.GradientTransformationExtraArgs
  state = lopt.init_state(N)          # coordinatewise ones: the per-coordinate state
  update, state = lopt.step(meta_params, grad, state)   # on a flat [N] gradient

The transformation works on any pytree of float leaves (f32, bf16, ...): it
flattens all coordinates into one float32 vector of length N, runs the
coordinatewise network in float32 with coordinates on the last (contiguous)
axis, and casts each update back to its leaf's dtype. Its recurrent state lives
in the optax state. It accepts `loss=` and ignores other extra arguments.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flatl2o import _checks


@runtime_checkable
class LearnedOptimizer(Protocol):
  """What every learned-optimizer architecture provides, and all the rest of flatl2o calls.

  An architecture is a frozen (hashable) dataclass of hyper-parameters: it is a
  static argument of jitted functions, and exports record its fields, so they
  must be JSON values. A coordinatewise architecture implements `init_state` and
  `step` on flat `[N]` vectors and gets `transform` from
  `coordinatewise_transform(self, meta_params)`. Subclass this protocol (as the
  built-ins do) to inherit the defaults of `preferred_meta_loss`, and register
  the class with `flatl2o.optimizers.register(name, cls)` so that it can be
  found by name and its exports load.
  """

  # The registered name; exports record it, and loading looks it up.
  name: str
  # True when each coordinate's update depends only on that coordinate's own
  # gradients and state; meta-training then updates a meta-batch in one call
  # (B optimizees are B times more coordinates) instead of vmapping it.
  coordinatewise: bool
  # The meta-loss (`MetaTrainConfig.meta_loss`) the binaries and benchmarks
  # meta-train this architecture with unless told otherwise.
  preferred_meta_loss: str = "mean"

  def init(self, key: jax.Array) -> Any:
    """Fresh meta-parameters: a pytree of float32 arrays.

    Args:
      key: PRNG key for the random initialisation.

    Returns:
      The meta-parameters (what meta-training fits), a pytree of float32 arrays.
    """
    ...

  def init_state(self, num_coords: int) -> Any:
    """The optimizer's state for `num_coords` coordinates (a pytree, coordinates last).

    Args:
      num_coords: N, the number of coordinates (flattened parameters) to optimize.

    Returns:
      The initial state: a pytree whose per-coordinate arrays have N on the last axis.
    """
    ...

  def step(self, meta_params: Any, grad: jax.Array, state: Any) -> tuple[jax.Array, Any]:
    """One update from the flat float32 gradient `[N]`: `(update [N], new state)`.

    Args:
      meta_params: the meta-parameters, as from `init`.
      grad: the flat float32 gradient, shape `[N]`.
      state: the state from `init_state(N)` or from the previous `step`.

    Returns:
      `(update, new_state)`: the update `[N]` (added to the parameters) and the new state.
    """
    ...

  def transform(self, meta_params: Any) -> optax.GradientTransformationExtraArgs:
    """The optax transformation that applies this architecture with `meta_params`.

    Args:
      meta_params: the meta-parameters to apply, as from `init`.

    Returns:
      An `optax.GradientTransformationExtraArgs` over pytrees of float leaves.
    """
    ...


def architecture_hparams(lopt: LearnedOptimizer) -> dict[str, Any]:
  """The architecture's hyper-parameters (its dataclass fields) as a JSON-friendly dict.

  Args:
    lopt: a learned-optimizer architecture (a dataclass instance).

  Returns:
    Field name -> value, with tuple values turned into lists.
  """
  return {f.name: (list(v) if isinstance(v := getattr(lopt, f.name), tuple) else v)
          for f in dataclasses.fields(lopt)}


def check_float_tree(tree: Any, what: str = "params") -> None:
  """Raises ValueError unless every leaf is a floating-point array.

  Args:
    tree: the pytree to check (parameters or updates).
    what: what `tree` is, for the error message.

  Raises:
    ValueError: a leaf's dtype is not floating (e.g. integer or complex); the message
      names the leaf's path and what to do instead.
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
      if jnp.issubdtype(dtype, jnp.complexfloating):
        hint = "optimize complex parameters as their real and imaginary parts"
      else:
        hint = "keep integer state out of the optimized pytree (e.g. with optax.masked)"
      raise ValueError(
          f"learned optimizers update float arrays only; {what} leaf "
          f"{jax.tree_util.keystr(path) or '<root>'} has dtype {dtype}; {hint}")


def flatten(tree: Any) -> tuple[jax.Array, Callable[[jax.Array], Any]]:
  """All coordinates of `tree` as one float32 vector, and the inverse map.

  The inverse casts each piece back to its leaf's dtype. An empty tree gives a
  vector of length 0.

  Args:
    tree: a pytree of arrays.

  Returns:
    `(flat, unflatten)`: `flat` is the float32 vector `[N]` of all leaves, raveled and
    concatenated in `jax.tree` leaf order; `unflatten` maps such a vector back to a pytree
    shaped like `tree`.
  """
  leaves, treedef = jax.tree.flatten(tree)
  sizes = [int(np.prod(jnp.shape(l))) for l in leaves]
  shapes = [jnp.shape(l) for l in leaves]
  dtypes = [jnp.result_type(l) for l in leaves]
  if not leaves:
    return jnp.zeros((0,), jnp.float32), lambda v: jax.tree.unflatten(treedef, [])
  flat = jnp.concatenate([jnp.ravel(l).astype(jnp.float32) for l in leaves])
  offsets = np.cumsum([0] + sizes)

  def unflatten(vector):
    pieces = [vector[offsets[i]:offsets[i + 1]].reshape(shapes[i]).astype(dtypes[i])
              for i in range(len(leaves))]
    return jax.tree.unflatten(treedef, pieces)

  return flat, unflatten


def num_coordinates(tree: Any) -> int:
  """The number of coordinates (array elements) over all leaves of `tree`.

  Args:
    tree: a pytree of arrays.

  Returns:
    N, the sum of the leaves' sizes, as a Python int (0 for an empty tree).
  """
  return int(sum(np.prod(jnp.shape(l)) for l in jax.tree.leaves(tree)))


def log_sign_features(grad: jax.Array, k: float) -> jax.Array:
  """The L2O-DM gradient preprocessing, `[2, N]` from a gradient vector `[N]`.

  `(log|g| / k, sign g)` where `|g| >= e^-k`, else `(-1, e^k g)` (Andrychowicz
  et al. 2016, appendix A): scale-free inputs for gradients of any magnitude.

  Args:
    grad: the gradient vector, shape `[N]`.
    k: the preprocessing constant (the original code used 5); positive.

  Returns:
    A `[2, N]` array in `grad`'s dtype: row 0 the log-magnitude feature, row 1 the sign
    (or scaled gradient) feature.
  """
  magnitude = jnp.abs(grad)
  big = magnitude >= float(np.exp(-k))  # Python floats are weakly typed: grad's dtype stays
  log_part = jnp.where(big, jnp.log(jnp.maximum(magnitude, 1e-30)) / k, -1.0)
  sign_part = jnp.where(big, jnp.sign(grad), float(np.exp(k)) * grad)
  return jnp.stack([log_part, sign_part])


def lstm_stack(layers: list[dict], x: jax.Array, hidden: tuple[jax.Array, ...],
               cell: tuple[jax.Array, ...]):
  """Stacked LSTM cells on coordinates-last arrays; returns `(top h, hiddens, cells)`.

  Layer l has `w: [4H, in + H]`, `b: [4H, 1]` and gate order (i, f, g, o); x is
  `[in, N]`, each state `[H, N]`: one fused matmul per layer.

  Args:
    layers: per layer, `{"w": [4H, in + H], "b": [4H, 1]}` (as from `lstm_init`).
    x: the input to the first layer, `[in, N]`.
    hidden: per layer, the previous output `h`, `[H, N]`.
    cell: per layer, the previous cell `c`, `[H, N]`.

  Returns:
    `(top_h, hiddens, cells)`: the top layer's new output `[H, N]`, and tuples of every
    layer's new `h` and new `c`.
  """
  new_hidden, new_cell = [], []
  for layer, p in enumerate(layers):
    z = p["w"] @ jnp.concatenate([x, hidden[layer]], axis=0) + p["b"]
    i, f, g, o = jnp.split(z, 4, axis=0)  # split, not slices: its transpose is one concat
    c = jax.nn.sigmoid(f) * cell[layer] + jax.nn.sigmoid(i) * jnp.tanh(g)
    x = jax.nn.sigmoid(o) * jnp.tanh(c)
    new_hidden.append(x)
    new_cell.append(c)
  return x, tuple(new_hidden), tuple(new_cell)


def lstm_init(key: jax.Array, input_size: int, hidden_size: int, num_layers: int) -> list[dict]:
  """Stacked LSTM weights: uniform(+-1/sqrt(H)), zero biases but the forget gate's (1).

  Args:
    key: PRNG key for the weights.
    input_size: size of the first layer's input.
    hidden_size: H, units per layer.
    num_layers: number of stacked layers.

  Returns:
    A list of `num_layers` dicts `{"w": [4H, in + H], "b": [4H, 1]}` of float32 arrays,
    gate order (i, f, g, o), where `in` is `input_size` for the first layer and H above.
  """
  h = hidden_size
  layers = []
  for layer, k in enumerate(jax.random.split(key, num_layers)):
    fan_in = (input_size if layer == 0 else h) + h
    bias = jnp.zeros((4 * h, 1), jnp.float32).at[h:2 * h].set(1.0)
    layers.append({"w": uniform(k, (4 * h, fan_in), 1.0 / np.sqrt(h)), "b": bias})
  return layers


def uniform(key: jax.Array, shape: tuple[int, ...], scale: float) -> jax.Array:
  """Float32 samples drawn uniformly from `[-scale, scale)`.

  Args:
    key: PRNG key.
    shape: shape of the result.
    scale: half-width of the interval.

  Returns:
    A float32 array of shape `shape`.
  """
  return jax.random.uniform(key, shape, jnp.float32, -scale, scale)


def check_positive_int(lopt, *fields: str) -> None:
  """Raises ValueError unless each named field of `lopt` is a positive integer (not a bool).

  Args:
    lopt: the architecture whose fields are checked (its class name appears in the error).
    *fields: names of the fields to check.
  """
  for field in fields:
    _checks.positive_int(f"{type(lopt).__name__}.{field}", getattr(lopt, field))


def check_number(lopt, field: str, ok: Callable[[float], bool], accepted: str) -> None:
  """Raises ValueError unless `lopt.field` is a number for which `ok` holds.

  A traced value (the setting injected with `optax.inject_hyperparams`, or
  scheduled) is not checked: it has no concrete value to check, and optax's own
  transformations do not check theirs either.

  Args:
    lopt: the architecture whose field is checked (its class name appears in the error).
    field: name of the field.
    ok: predicate that the field's value, converted to float, must satisfy.
    accepted: what is accepted, in words, for the error message (e.g. "positive").

  Raises:
    ValueError: the value is a bool, cannot be converted to float, or fails `ok`.
  """
  value = getattr(lopt, field)
  if isinstance(value, jax.core.Tracer):
    return
  try:
    number = float(value)
  except (TypeError, ValueError):
    number = None
  if isinstance(value, bool) or number is None or not ok(number):
    raise ValueError(f"{type(lopt).__name__}.{field} must be {accepted}, got {value!r}")


def meta_dtype(meta_params: Any):
  """The float dtype the recurrent state lives in: the meta-parameters' (None when empty).

  float32 normally; float64 when meta-gradients are checked in double precision.

  Args:
    meta_params: the meta-parameters (a pytree of arrays).

  Returns:
    The result dtype of all the meta-parameters' leaves, or None when there are none.
  """
  leaves = jax.tree.leaves(meta_params)
  return jnp.result_type(*leaves) if leaves else None


def cast_state(state: Any, dtype) -> Any:
  """`state` with its floating leaves in `dtype` (integer counters untouched).

  Args:
    state: the optimizer state (a pytree of arrays).
    dtype: the float dtype to cast to; None returns `state` unchanged.

  Returns:
    The state with its floating leaves cast to `dtype` and its other leaves as they were.
  """
  if dtype is None:
    return state
  return jax.tree.map(
      lambda s: s.astype(dtype) if jnp.issubdtype(s.dtype, jnp.floating) else s, state)


def keep_dtypes(new_state: Any, old_state: Any) -> Any:
  """`new_state` in the dtypes of `old_state`, leaf by leaf.

  Under `jax_enable_x64`, a NumPy float64 constant in a step would otherwise
  promote float32 state to float64 after one update, and `lax.scan` /
  `lax.cond` / `optax.MultiSteps` over the state would then fail.

  Args:
    new_state: the state after an update.
    old_state: the state before it, with the same tree structure.

  Returns:
    `new_state` with each leaf cast to the dtype of the matching leaf of `old_state`.
  """
  return jax.tree.map(lambda n, o: n.astype(o.dtype) if n.dtype != o.dtype else n,
                      new_state, old_state)


def coordinatewise_transform(lopt: LearnedOptimizer, meta_params: Any) -> optax.GradientTransformationExtraArgs:
  """Wraps `lopt.init_state(N)` and `lopt.step(meta_params, grad, state)` as optax.

  The network sees the flat float32 gradient; `loss=` and any other extra
  arguments are accepted and ignored (architectures that use the loss read it
  in their own `update`).

  Args:
    lopt: a coordinatewise architecture (it implements `init_state` and `step`).
    meta_params: the meta-parameters passed to every `lopt.step`.

  Returns:
    An `optax.GradientTransformationExtraArgs`: its `init` builds `lopt.init_state(N)` for
    the N coordinates of the parameters (floating state in the meta-parameters' dtype); its
    `update` flattens the updates, runs `lopt.step` and unflattens the step into each leaf's
    dtype. Both raise ValueError on a non-float leaf (`check_float_tree`).
  """

  dtype = meta_dtype(meta_params)

  def init_fn(params):
    check_float_tree(params)
    return cast_state(lopt.init_state(num_coordinates(params)), dtype)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    check_float_tree(updates, "updates")  # dtypes are static: free under jit
    grad, unflatten = flatten(updates)
    step, new_state = lopt.step(meta_params, grad, state)
    return unflatten(step), keep_dtypes(new_state, state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
