"""Optimizees: a model, its loss and its data, as a jit-friendly pytree.

A task is a `flax.struct` dataclass: its data arrays are pytree leaves and its
model and hyper-parameters are static, so `jax.jit(fn)(task, params, key)`
compiles once per task kind and never embeds the dataset as a constant. Every
task follows the `Task` protocol:

  params = task.init(key)
  batch = task.sample_batch(key)                 # inside jit: index sampling
  loss = task.loss(params, batch)                # scalar, differentiable
  metrics = task.evaluate(params, split="test")  # full split, jitted
  batch = task.fixed_batch(2048)                 # first examples: flatness measurements
  task.metric_names                              # keys of `evaluate`
  task.name, task.dataset_name, task.batch_size  # what it is (run.json, reports)
"""

from __future__ import annotations

import functools
from typing import Any, Protocol, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from flatl2o.data import SPLITS, DataError, Dataset

@runtime_checkable
class Task(Protocol):
  """An optimizee: everything meta-training, evaluation and the binaries call on one.

  Implementations are `flax.struct` dataclasses (data as pytree leaves, the
  rest static), so a task is an ordinary argument of jitted functions.
  """

  name: str
  batch_size: int
  # The keys of `evaluate`; a task with 'accuracy' is scored by it in
  # validation, any other by minus its 'loss'.
  metric_names: tuple[str, ...]

  @property
  def dataset_name(self) -> str:
    """The data the task trains on (a `flatl2o.data` name, or the task's own)."""
    ...

  def init(self, key: jax.Array) -> Any:
    """Fresh optimizee parameters (a pytree of float arrays).

    Args:
      key: PRNG key for the initialisation.

    Returns:
      The parameters, a pytree of float arrays.
    """
    ...

  def sample_batch(self, key: jax.Array, split: str = "train") -> Any:
    """A random minibatch of `batch_size` examples; jit-friendly (index sampling).

    Args:
      key: PRNG key that picks the examples.
      split: 'train', 'validation' or 'test'.

    Returns:
      The batch, in the form `loss` takes.
    """
    ...

  def fixed_batch(self, size: int = 2048, split: str = "train") -> Any:
    """The first `size` examples of a split: a fixed batch for flatness measurements.

    Args:
      size: number of examples (the whole split when it holds fewer).
      split: 'train', 'validation' or 'test'.

    Returns:
      The batch, in the form `loss` takes.
    """
    ...

  def loss(self, params: Any, batch: Any) -> jax.Array:
    """The scalar, differentiable training loss on a batch.

    Args:
      params: the optimizee parameters, as from `init`.
      batch: a batch from `sample_batch` or `fixed_batch`.

    Returns:
      The loss, a scalar array.
    """
    ...

  def evaluate(self, params: Any, split: str = "test") -> dict[str, jax.Array]:
    """`metric_names` -> value over a whole split.

    Args:
      params: the optimizee parameters, as from `init`.
      split: 'train', 'validation' or 'test'.

    Returns:
      A dict from each of `metric_names` to a scalar array.
    """
    ...


# Evaluation walks a split in chunks of this many examples, bounding memory.
EVAL_CHUNK = 2048


def _chunked_sum(fn, arrays: tuple[jax.Array, ...], num: int) -> tuple[jax.Array, ...]:
  """Sums `fn(*chunk, mask)` over fixed-size chunks of `arrays` (padded, masked)."""
  chunk = min(num, EVAL_CHUNK)
  num_chunks = -(-num // chunk)
  pad = num_chunks * chunk - num

  def reshape(a):
    a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
    return a.reshape((num_chunks, chunk) + a.shape[1:])

  mask = (jnp.arange(num_chunks * chunk) < num).reshape(num_chunks, chunk)
  sums = jax.lax.map(lambda c: fn(*c), tuple(reshape(a) for a in arrays) + (mask,))
  return tuple(s.sum() for s in sums)


@struct.dataclass
class ClassificationTask:
  """A Flax classifier trained with softmax cross-entropy on a `Dataset`."""

  data: Dataset
  model: nn.Module = struct.field(pytree_node=False)
  name: str = struct.field(pytree_node=False)
  batch_size: int = struct.field(pytree_node=False, default=128)

  metric_names = ("loss", "accuracy")

  @property
  def dataset_name(self) -> str:
    return self.data.name

  def init(self, key: jax.Array):
    """Initialises the model on a dummy input of the dataset's input shape.

    Args:
      key: PRNG key for the initialisation.

    Returns:
      The model's `params` collection (a pytree of arrays).
    """
    dummy = jnp.zeros((1,) + self.data.input_shape, jnp.float32)
    return self.model.init(key, dummy)["params"]

  def apply(self, params, inputs: jax.Array) -> jax.Array:
    """The model's logits on a batch of inputs.

    Args:
      params: the model parameters, as from `init`.
      inputs: `[batch, *input_shape]` inputs.

    Returns:
      The model's output, logits `[batch, num_classes]`.
    """
    return self.model.apply({"params": params}, inputs)

  def sample_batch(self, key: jax.Array, split: str = "train"):
    """A minibatch of `batch_size` examples drawn uniformly with replacement; jit-friendly.

    Args:
      key: PRNG key that picks the examples.
      split: 'train', 'validation' or 'test'.

    Returns:
      `(inputs, labels)`: `[batch_size, *input_shape]` and `[batch_size]`.
    """
    return self.data.sample_batch(key, self.batch_size, split)

  def fixed_batch(self, size: int = 2048, split: str = "train"):
    """The first `size` examples of a split: a fixed batch for flatness measurements.

    Args:
      size: number of examples (the whole split when it holds fewer).
      split: 'train', 'validation' or 'test'.

    Returns:
      `(inputs, labels)` of the first `size` examples.
    """
    inputs, labels = self.data.split(split)
    return inputs[:size], labels[:size]

  def loss(self, params, batch) -> jax.Array:
    """Mean softmax cross-entropy of the model's logits against the integer labels.

    Args:
      params: the model parameters, as from `init`.
      batch: `(inputs, labels)`.

    Returns:
      The mean loss over the batch, a scalar array.
    """
    inputs, labels = batch
    logits = self.apply(params, inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  def evaluate(self, params, split: str = "test") -> dict[str, jax.Array]:
    """Mean loss and accuracy over a whole split (jit-compiled, chunked).

    Args:
      params: the model parameters, as from `init`.
      split: 'train', 'validation' or 'test'.

    Returns:
      `{"loss": mean cross-entropy, "accuracy": fraction classified correctly}`, scalars.
    """
    return _evaluate_classification(self, params, split)


@functools.partial(jax.jit, static_argnames="split")
def _evaluate_classification(task: ClassificationTask, params, split: str):
  inputs, labels = task.data.split(split)

  def chunk_sums(x, y, mask):
    logits = task.apply(params, x)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    correct = jnp.argmax(logits, -1) == y
    return jnp.where(mask, losses, 0.0).sum(), jnp.where(mask, correct, False).sum()

  n = labels.shape[0]
  loss_sum, num_correct = _chunked_sum(chunk_sums, (inputs, labels), n)
  return {"loss": loss_sum / n, "accuracy": num_correct / n}


@struct.dataclass
class QuadraticTask:
  """Least squares `f(w) = mean_i (x_i . w - y_i)^2 / 2` with a known optimum.

  Inputs have covariance `Q diag(s) Q^T` with eigenvalues `s` log-spaced in
  `[1, condition_number]`; targets are noiseless, `y = X w*`, so `w*` is the
  minimiser on every split and the minimum loss is 0. Minibatches are rows.
  """

  inputs: dict[str, jax.Array]
  targets: dict[str, jax.Array]
  optimum: jax.Array
  name: str = struct.field(pytree_node=False, default="quadratic")
  batch_size: int = struct.field(pytree_node=False, default=128)

  metric_names = ("loss", "distance_to_optimum")

  @property
  def dataset_name(self) -> str:
    return self.name  # it makes its own data

  @classmethod
  def create(cls, dim: int = 20, condition_number: float = 10.0,
             num_examples: int = 2048, batch_size: int = 128, seed: int = 0):
    """Draws a random problem: a basis, an optimum `w*`, and inputs and targets per split.

    Args:
      dim: number of parameters (the length of `w`).
      condition_number: ratio of the largest to the smallest eigenvalue of the input
        covariance.
      num_examples: rows in each of the train, validation and test splits.
      batch_size: minibatch size of `sample_batch`.
      seed: seed of the NumPy generator that draws the basis, optimum and inputs.

    Returns:
      A `QuadraticTask` (float32 arrays) whose optimum `w*` is the same on every split.
    """
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scales = np.sqrt(np.logspace(0.0, np.log10(condition_number), dim))
    optimum = rng.standard_normal(dim)
    inputs, targets = {}, {}
    for split in ("train", "validation", "test"):
      x = rng.standard_normal((num_examples, dim)) * scales @ basis.T
      inputs[split] = jnp.asarray(x, jnp.float32)
      targets[split] = jnp.asarray(x @ optimum, jnp.float32)
    return cls(inputs=inputs, targets=targets, optimum=jnp.asarray(optimum, jnp.float32),
               batch_size=batch_size)

  def init(self, key: jax.Array):
    """Initial parameters: `w` standard normal, scaled by 1/sqrt(dim).

    Args:
      key: PRNG key.

    Returns:
      `{"w": [dim]}`.
    """
    dim = self.optimum.shape[0]
    return {"w": jax.random.normal(key, (dim,)) / np.sqrt(dim)}

  def _check_split(self, split: str) -> None:
    if split not in self.targets:
      raise DataError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")

  def sample_batch(self, key: jax.Array, split: str = "train"):
    """A minibatch of `batch_size` rows drawn uniformly with replacement; jit-friendly.

    Args:
      key: PRNG key that picks the rows.
      split: 'train', 'validation' or 'test' (DataError otherwise).

    Returns:
      `(inputs, targets)`: `[batch_size, dim]` and `[batch_size]`.
    """
    self._check_split(split)
    idx = jax.random.randint(key, (self.batch_size,), 0, self.targets[split].shape[0])
    return self.inputs[split][idx], self.targets[split][idx]

  def fixed_batch(self, size: int = 2048, split: str = "train"):
    """The first `size` rows of a split: a fixed batch for flatness measurements.

    Args:
      size: number of rows (the whole split when it holds fewer).
      split: 'train', 'validation' or 'test' (DataError otherwise).

    Returns:
      `(inputs, targets)` of the first `size` rows.
    """
    self._check_split(split)
    return self.inputs[split][:size], self.targets[split][:size]

  def loss(self, params, batch) -> jax.Array:
    """Half the mean squared residual on a batch, `mean_i (x_i . w - y_i)^2 / 2`.

    Args:
      params: `{"w": [dim]}`.
      batch: `(inputs, targets)`, `[n, dim]` and `[n]`.

    Returns:
      The loss, a scalar array.
    """
    inputs, targets = batch
    return 0.5 * jnp.mean((inputs @ params["w"] - targets) ** 2)

  def evaluate(self, params, split: str = "test") -> dict[str, jax.Array]:
    """The loss over a whole split and the distance of `w` to the optimum.

    Args:
      params: `{"w": [dim]}`.
      split: 'train', 'validation' or 'test' (DataError otherwise).

    Returns:
      `{"loss": loss on the split, "distance_to_optimum": ||w - w*||}`, scalars.
    """
    self._check_split(split)
    return {"loss": self.loss(params, (self.inputs[split], self.targets[split])),
            "distance_to_optimum": jnp.linalg.norm(params["w"] - self.optimum)}
