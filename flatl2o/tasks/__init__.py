"""Optimizees by name: `get(name, dataset=...)` and `names()`.

| name          | model                                                      |
|---------------|------------------------------------------------------------|
| mlp_sigmoid   | one hidden layer of 20 sigmoid units (the classic L2O task)|
| mlp_relu      | one hidden layer of 20 ReLU units                          |
| mlp_deep      | two hidden layers of 20 sigmoid units                      |
| conv          | conv 3x3x16, pool, conv 5x5x32, pool (ReLU), dense         |
| quadratic     | well-conditioned least squares with a known optimum        |

`register(name, builder)` adds an optimizee; every built-in above is added the
same way:

  >>> def tiny_mlp(dataset, batch_size):
  ...   model = flatl2o.tasks.MLP(hidden_sizes=(4,), num_classes=dataset.num_classes)
  ...   return flatl2o.tasks.ClassificationTask(data=dataset, model=model, name="tiny_mlp",
  ...                                           batch_size=batch_size)
  >>> flatl2o.tasks.register("tiny_mlp", tiny_mlp)
  >>> task = flatl2o.tasks.get("tiny_mlp", dataset="digits")

Example:
  >>> task = flatl2o.tasks.get("mlp_sigmoid", dataset="digits")
  >>> params = task.init(jax.random.key(0))
  >>> loss = task.loss(params, task.sample_batch(jax.random.key(1)))

Every task follows the `Task` protocol (`flatl2o/tasks/base.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Callable

from flatl2o import _checks
from flatl2o import data as data_lib
from flatl2o.tasks.base import ClassificationTask, QuadraticTask, Task
from flatl2o.tasks.models import MLP, ConvNet


class TaskError(ValueError):
  """An unknown task, or a dataset that does not fit it."""


@dataclasses.dataclass(frozen=True)
class _Entry:
  builder: Callable[..., Task]
  uses_data: bool


_REGISTRY: dict[str, _Entry] = {}
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def register(name: str, builder: Callable[..., Task] | None = None, *, uses_data: bool = True,
             overwrite: bool = False) -> Callable[..., Task]:
  """Adds an optimizee to the registry under `name`; returns `builder`.

  Also a decorator: `@register("my_task")` above the builder's definition.

  Args:
    name: letters, digits, '_', '.' or '-'.
    builder: with `uses_data`, called as `builder(dataset, batch_size=...)` with a
      loaded `flatl2o.data.Dataset` (`get` loads a dataset given by name; the
      default is 'digits'); without, as `builder(batch_size=...)` (the task makes
      its own data, and `get` refuses a dataset). It returns a `Task`, and
      raises `TaskError` (or ValueError) with one line when the dataset does
      not fit it.
    uses_data: whether the task trains on a dataset.
    overwrite: replace a task already registered under `name`.

  Returns:
    `builder`, unchanged.

  Raises:
    TaskError: a bad name, a name already registered (without `overwrite`), or
      a builder that is not callable.

  Example:

  >>> import flatl2o
  >>> def tiny_mlp(dataset, batch_size):
  ...   model = flatl2o.tasks.MLP(hidden_sizes=(4,), num_classes=dataset.num_classes)
  ...   return flatl2o.tasks.ClassificationTask(data=dataset, model=model, name="doc_tiny_mlp",
  ...                                           batch_size=batch_size)
  >>> _ = flatl2o.tasks.register("doc_tiny_mlp", tiny_mlp, overwrite=True)
  >>> flatl2o.tasks.get("doc_tiny_mlp", dataset="digits", batch_size=8).name
  'doc_tiny_mlp'
  """
  if builder is None:
    return lambda b: register(name, b, uses_data=uses_data, overwrite=overwrite)
  if not isinstance(name, str) or not _NAME.fullmatch(name):
    raise TaskError(f"cannot register task name {name!r}: use letters, digits, '_', '.' or '-'")
  if name in _REGISTRY and not overwrite:
    raise TaskError(f"task {name!r} is already registered; pick another name, or pass "
                    "overwrite=True to replace it")
  if not callable(builder):
    raise TaskError(f"cannot register task {name!r}: its builder {builder!r} is not callable")
  _REGISTRY[name] = _Entry(builder=builder, uses_data=bool(uses_data))
  return builder


def names() -> tuple[str, ...]:
  """The registered tasks, built-ins first, in registration order.

  Returns:
    The task names, each accepted by `get`.
  """
  return tuple(_REGISTRY)


def get(name: str, dataset: str | data_lib.Dataset | None = None, *,
        data_dir: str | None = None, batch_size: int = 128):
  """Builds an optimizee.

  Args:
    name: one of `names()`.
    dataset: a dataset name (see `flatl2o.data.names()`, default 'digits') or a
      loaded `Dataset`. A task that makes its own data (such as 'quadratic')
      takes none.
    data_dir: where TFDS datasets are prepared.
    batch_size: training minibatch size.

  Returns:
    A `Task`: for the built-ins, a `ClassificationTask` or `QuadraticTask`.

  Raises:
    TaskError: unknown name, bad batch size, or a dataset whose inputs do not fit.
    flatl2o.data.DataError: the dataset cannot be loaded.
  """
  if name not in _REGISTRY:
    raise TaskError(f"unknown task {name!r}{_checks.did_you_mean(name, names())}; "
                    f"accepted: {', '.join(names())}")
  _checks.positive_int("batch_size", batch_size, TaskError)
  entry = _REGISTRY[name]
  if not entry.uses_data:
    if dataset is not None:
      raise TaskError(f"task {name!r} makes its own data; pass no dataset")
    return entry.builder(batch_size=batch_size)

  if dataset is None:
    dataset = data_lib.DEFAULT
  if not isinstance(dataset, data_lib.Dataset):
    dataset = data_lib.load(dataset, data_dir)
  return entry.builder(dataset, batch_size=batch_size)


def _mlp(dataset: data_lib.Dataset, *, batch_size: int, name: str,
         hidden_sizes: tuple[int, ...], activation: str) -> ClassificationTask:
  model = MLP(hidden_sizes=hidden_sizes, num_classes=dataset.num_classes,
              activation=activation)
  return ClassificationTask(data=dataset, model=model, name=name, batch_size=batch_size)


def _conv(dataset: data_lib.Dataset, *, batch_size: int) -> ClassificationTask:
  shape = dataset.input_shape
  if len(shape) != 3 or min(shape[:2]) < 4:
    raise TaskError(f"task 'conv' needs image inputs (height, width, channels) of at "
                    f"least 4x4; dataset {dataset.name!r} has inputs of shape {shape}")
  model = ConvNet(num_classes=dataset.num_classes)
  return ClassificationTask(data=dataset, model=model, name="conv", batch_size=batch_size)


def _quadratic(*, batch_size: int) -> QuadraticTask:
  return QuadraticTask.create(batch_size=batch_size)


register("mlp_sigmoid", functools.partial(_mlp, name="mlp_sigmoid", hidden_sizes=(20,),
                                          activation="sigmoid"))
register("mlp_relu", functools.partial(_mlp, name="mlp_relu", hidden_sizes=(20,),
                                       activation="relu"))
register("mlp_deep", functools.partial(_mlp, name="mlp_deep", hidden_sizes=(20, 20),
                                       activation="sigmoid"))
register("conv", _conv)
register("quadratic", _quadratic, uses_data=False)


__all__ = ["MLP", "ClassificationTask", "ConvNet", "QuadraticTask", "Task", "TaskError", "get",
           "names", "register"]
