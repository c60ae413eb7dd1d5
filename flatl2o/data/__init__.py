"""Datasets as device arrays: `load(name)` and the `Dataset` pytree.

Accepted names: 'digits' (embedded, offline), 'mnist', 'fashion_mnist', 'cifar10'
(TFDS array_record, prepared beforehand), and 'idx:PATH' (a folder of IDX files).
"""

from __future__ import annotations

import os

from flatl2o import _checks
from flatl2o.data import sources
from flatl2o.data.dataset import SPLITS, DataError, Dataset, from_arrays, held_out_split

DEFAULT = "digits"


def names() -> tuple[str, ...]:
  """The accepted dataset names; 'idx:PATH' takes any folder.

  Returns:
    The names accepted by `load`: 'digits', the TFDS names, then 'idx:PATH'.
  """
  return ("digits",) + sources.TFDS_NAMES + ("idx:PATH",)


def load(name: str, data_dir: str | None = None) -> Dataset:
  """Loads a dataset by name and places its arrays on the default device.

  Args:
    name: one of `names()`.
    data_dir: where TFDS datasets are prepared (TFDS names only).

  Returns:
    A `Dataset` with non-overlapping train, validation and test splits.

  Raises:
    DataError: unknown name, data not prepared, or a malformed file.
  """
  if not isinstance(name, str):
    raise DataError(f"dataset must be a name, got {type(name).__name__}; "
                    f"accepted: {', '.join(names())}")
  if name == "digits":
    return sources.load_digits()
  if name in sources.TFDS_NAMES:
    return sources.load_tfds(name, data_dir)
  if name.startswith("idx:"):
    return sources.load_idx(os.path.expanduser(name[len("idx:"):]))
  raise DataError(f"unknown dataset {name!r}{_checks.did_you_mean(name, names())}; "
                  f"accepted: {', '.join(names())}")




__all__ = ["DEFAULT", "SPLITS", "DataError", "Dataset", "from_arrays", "held_out_split",
           "load", "names"]
