"""Optimizees by name: `get(name, dataset=...)` and `names()`.

| name          | model                                                      |
|---------------|------------------------------------------------------------|
| mlp_sigmoid   | one hidden layer of 20 sigmoid units (the classic L2O task)|
| mlp_relu      | one hidden layer of 20 ReLU units                          |
| mlp_deep      | two hidden layers of 20 sigmoid units                      |
| conv          | conv 3x3x16, pool, conv 5x5x32, pool (ReLU), dense         |
| quadratic     | well-conditioned least squares with a known optimum        |

Example:
  >>> task = flatl2o.tasks.get("mlp_sigmoid", dataset="digits")
  >>> params = task.init(jax.random.key(0))
  >>> loss = task.loss(params, task.sample_batch(jax.random.key(1)))

Every task follows the `Task` protocol (`flatl2o/tasks/base.py`).
"""

from __future__ import annotations

from flatl2o import _checks
from flatl2o import data as data_lib
from flatl2o.tasks.base import ClassificationTask, QuadraticTask, Task
from flatl2o.tasks.models import MLP, ConvNet

_MLPS = {
    "mlp_sigmoid": ((20,), "sigmoid"),
    "mlp_relu": ((20,), "relu"),
    "mlp_deep": ((20, 20), "sigmoid"),
}


class TaskError(ValueError):
  """An unknown task, or a dataset that does not fit it."""


def names() -> tuple[str, ...]:
  return tuple(_MLPS) + ("conv", "quadratic")


def get(name: str, dataset: str | data_lib.Dataset | None = None, *,
        data_dir: str | None = None, batch_size: int = 128):
  """Builds an optimizee.

  Args:
    name: one of `names()`.
    dataset: a dataset name (see `flatl2o.data.names()`, default 'digits') or a
      loaded `Dataset`. The quadratic task makes its own data and takes none.
    data_dir: where TFDS datasets are prepared.
    batch_size: training minibatch size.

  Returns:
    A `ClassificationTask` or `QuadraticTask`.

  Raises:
    TaskError: unknown name, bad batch size, or a dataset whose inputs do not fit.
    flatl2o.data.DataError: the dataset cannot be loaded.
  """
  if name not in names():
    raise TaskError(f"unknown task {name!r}{_checks.did_you_mean(name, names())}; "
                    f"accepted: {', '.join(names())}")
  _checks.positive_int("batch_size", batch_size, TaskError)
  if name == "quadratic":
    if dataset is not None:
      raise TaskError("task 'quadratic' makes its own data; pass no dataset")
    return QuadraticTask.create(batch_size=batch_size)

  if dataset is None:
    dataset = data_lib.DEFAULT
  if not isinstance(dataset, data_lib.Dataset):
    dataset = data_lib.load(dataset, data_dir)
  if name == "conv":
    shape = dataset.input_shape
    if len(shape) != 3 or min(shape[:2]) < 4:
      raise TaskError(f"task 'conv' needs image inputs (height, width, channels) of at "
                      f"least 4x4; dataset {dataset.name!r} has inputs of shape {shape}")
    model = ConvNet(num_classes=dataset.num_classes)
  else:
    hidden, activation = _MLPS[name]
    model = MLP(hidden_sizes=hidden, num_classes=dataset.num_classes,
                activation=activation)
  return ClassificationTask(data=dataset, model=model, name=name, batch_size=batch_size)


__all__ = ["ClassificationTask", "QuadraticTask", "Task", "TaskError", "get", "names"]
