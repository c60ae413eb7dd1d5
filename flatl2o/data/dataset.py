"""A classification dataset held as device arrays, with batches drawn inside jit.

`Dataset` is a pytree: its arrays are leaves, so a jitted function takes it as an
argument (the arrays are not baked into the program as constants) and draws
minibatches with `sample_batch(key, batch_size)` by index sampling. An inner
training loop therefore never returns to the host for data.

Example:
  >>> data = flatl2o.data.load("digits")
  >>> @jax.jit
  ... def mean_label(data, key):
  ...   _, labels = data.sample_batch(key, 32)
  ...   return labels.mean()
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

SPLITS = ("train", "validation", "test")


class DataError(ValueError):
  """A dataset that cannot be loaded or does not fit; the message says what to do."""


@struct.dataclass
class Dataset:
  """Train, validation and test arrays of a classification dataset.

  Attributes:
    train_x, train_y: training inputs `[n, *input_shape]` (float32) and labels
      `[n]` (int32).
    validation_x, validation_y: held out from the training data, for model
      selection during meta-training.
    test_x, test_y: only ever used for reporting.
    name: the name it was loaded under.
    num_classes: number of label values; labels lie in `[0, num_classes)`.
    input_shape: shape of one input, e.g. `(8, 8, 1)`.
  """

  train_x: jax.Array
  train_y: jax.Array
  validation_x: jax.Array
  validation_y: jax.Array
  test_x: jax.Array
  test_y: jax.Array
  name: str = struct.field(pytree_node=False)
  num_classes: int = struct.field(pytree_node=False)
  input_shape: tuple[int, ...] = struct.field(pytree_node=False)

  def split(self, split: str) -> tuple[jax.Array, jax.Array]:
    """Returns `(inputs, labels)` of one split ('train', 'validation', 'test').

    Args:
      split: 'train', 'validation' or 'test'.

    Returns:
      `(inputs, labels)`: that split's `[n, *input_shape]` inputs and `[n]` labels.

    Raises:
      DataError: `split` is not one of `SPLITS`.
    """
    if split not in SPLITS:
      raise DataError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
    return getattr(self, f"{split}_x"), getattr(self, f"{split}_y")

  def num_examples(self, split: str) -> int:
    """The number of examples in one split.

    Args:
      split: 'train', 'validation' or 'test'.

    Returns:
      The split's number of examples, as a Python int.
    """
    return int(self.split(split)[1].shape[0])

  def sample_batch(self, key: jax.Array, batch_size: int,
                   split: str = "train") -> tuple[jax.Array, jax.Array]:
    """Draws `batch_size` examples uniformly with replacement; jit-friendly.

    Args:
      key: PRNG key that picks the examples.
      batch_size: number of examples to draw.
      split: 'train', 'validation' or 'test'.

    Returns:
      `(inputs, labels)`: `[batch_size, *input_shape]` and `[batch_size]`.
    """
    inputs, labels = self.split(split)
    idx = jax.random.randint(key, (batch_size,), 0, labels.shape[0])
    return inputs[idx], labels[idx]


def held_out_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic `(kept, held_out)` index arrays; `held_out` has round(n*fraction).

  Args:
    n: number of examples to split.
    fraction: the share to hold out, in (0, 1).
    seed: seed of the NumPy permutation.

  Returns:
    `(kept, held_out)`: sorted index arrays that partition `range(n)`; `held_out` has
    `max(1, round(n * fraction))` entries.

  Raises:
    DataError: `fraction` is not in (0, 1), or it would hold out all `n` examples.
  """
  if not 0.0 < fraction < 1.0:
    raise DataError(f"held-out fraction must lie in (0, 1), got {fraction}")
  perm = np.random.default_rng(seed).permutation(n)
  num_held = max(1, int(round(n * fraction)))
  if num_held >= n:
    raise DataError(f"cannot hold out {fraction:.0%} of only {n} examples")
  return np.sort(perm[num_held:]), np.sort(perm[:num_held])


# Fixed seeds: a split is part of the dataset's definition, not of an experiment.
_VALIDATION_SEED = 1
_TEST_SEED = 2


def from_arrays(name: str,
                train: tuple[np.ndarray, np.ndarray],
                test: tuple[np.ndarray, np.ndarray] | None = None,
                *,
                validation: tuple[np.ndarray, np.ndarray] | None = None,
                num_classes: int | None = None,
                validation_fraction: float = 0.1,
                test_fraction: float = 0.2) -> Dataset:
  """Builds a `Dataset` from host arrays and places it on the default device.

  Args:
    name: a name for reports.
    train: `(inputs, labels)`; inputs `[n, ...]` of any real dtype (uint8 images
      are scaled to [0, 1]), labels `[n]` integers.
    test: the test split; when None a deterministic `test_fraction` of `train`
      is held out instead.
    validation: when None a deterministic `validation_fraction` of the
      (remaining) training examples is held out.
    num_classes: defaults to `max(label) + 1` over all splits.
    validation_fraction: see `validation`.
    test_fraction: see `test`.

  Returns:
    A `Dataset` whose splits do not overlap when carved from one array.
  """
  train_x, train_y = _check_pair(name, "train", *train)
  if test is None:
    (train_x, train_y), (test_x, test_y) = _carve(train_x, train_y, test_fraction, _TEST_SEED)
  else:
    test_x, test_y = _check_pair(name, "test", *test)
  if validation is None:
    (train_x, train_y), (validation_x, validation_y) = _carve(
        train_x, train_y, validation_fraction, _VALIDATION_SEED)
  else:
    validation_x, validation_y = _check_pair(name, "validation", *validation)

  shapes = {x.shape[1:] for x in (train_x, validation_x, test_x)}
  if len(shapes) != 1:
    raise DataError(f"dataset {name!r}: splits have different input shapes {sorted(shapes)}")
  max_label = max(int(y.max()) for y in (train_y, validation_y, test_y))
  if num_classes is None:
    num_classes = max_label + 1
  if max_label >= num_classes:
    raise DataError(f"dataset {name!r}: label {max_label} is out of range for "
                    f"{num_classes} classes")
  put = lambda a: jax.device_put(jnp.asarray(a))
  return Dataset(
      train_x=put(train_x), train_y=put(train_y),
      validation_x=put(validation_x), validation_y=put(validation_y),
      test_x=put(test_x), test_y=put(test_y),
      name=name, num_classes=int(num_classes),
      input_shape=tuple(int(d) for d in train_x.shape[1:]))


def _carve(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
  """`((kept_x, kept_y), (held_x, held_y))` by `held_out_split`."""
  keep, held = held_out_split(len(y), fraction, seed)
  return (x[keep], y[keep]), (x[held], y[held])


def _check_pair(name: str, split: str, x, y) -> tuple[np.ndarray, np.ndarray]:
  x, y = np.asarray(x), np.asarray(y)
  if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0] or y.shape[0] == 0:
    raise DataError(
        f"dataset {name!r}, split {split!r}: expected inputs [n, ...] and labels [n] "
        f"with n > 0, got shapes {x.shape} and {y.shape}")
  if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
    raise DataError(f"dataset {name!r}, split {split!r}: labels must be non-negative "
                    f"integers, got dtype {y.dtype}")
  if x.dtype == np.uint8:
    x = x.astype(np.float32) / 255.0
  elif np.issubdtype(x.dtype, np.number):
    x = x.astype(np.float32)
  else:
    raise DataError(f"dataset {name!r}, split {split!r}: inputs must be numeric, "
                    f"got dtype {x.dtype}")
  if not np.isfinite(x).all():
    bad = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum())
    raise DataError(f"dataset {name!r}, split {split!r}: {bad} examples contain NaN or "
                    "infinite values; clean the data before loading it")
  return x, y.astype(np.int32)


