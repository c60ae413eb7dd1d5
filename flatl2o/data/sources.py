"""Where datasets come from: an embedded default, TFDS array_record, IDX folders.

- `digits`: scikit-learn's 1,797 real handwritten 8x8 digits (UCI optdigits test
  set), shipped inside the scikit-learn wheel, so it works offline. Pixel values
  0..16 are scaled to [0, 1]; 20% is held out as test, then 10% of the rest as
  validation, by fixed permutations.
- `mnist`, `fashion_mnist`, `cifar10`: `tfds.data_source` over prepared
  array_record files (random access, no TensorFlow import). Validation is 10% of
  the official training split; test is the official test split. Not prepared
  yet: downloaded and prepared once through TFDS (`download_and_prepare`, with
  its progress bars) when the download host answers; otherwise, or with
  `FLATL2O_OFFLINE=1`, one line says how to prepare it on a machine with network.
- `idx:PATH`: a folder of IDX files (the classic MNIST format, gzip or raw).
  `train-*` and `t10k-*`/`test-*` files give the two splits; a folder with one
  split gets a deterministic 20% held out as test.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re

import numpy as np
from absl import logging as absl_logging

from flatl2o.data.dataset import DataError, Dataset, from_arrays

TFDS_NAMES = ("mnist", "fashion_mnist", "cifar10")
# Where TFDS fetches these datasets' files and metadata from; probed before a download.
DOWNLOAD_HOST = ("storage.googleapis.com", 443)
OFFLINE_ENV = "FLATL2O_OFFLINE"  # set (to anything but "" or "0"): never download


def network_available(timeout_s: float = 3.0) -> bool:
  """Whether a dataset download may be tried: the TFDS download host answers.

  Args:
    timeout_s: how long to wait for the connection.

  Returns:
    False when `FLATL2O_OFFLINE` is set, or when `DOWNLOAD_HOST` cannot be reached within
    `timeout_s` (no network, no name resolution, a firewall); True otherwise.
  """
  import socket  # pylint: disable=g-import-not-at-top
  if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
    return False
  try:
    socket.create_connection(DOWNLOAD_HOST, timeout=timeout_s).close()
  except OSError:
    return False
  return True


def load_digits() -> Dataset:
  """scikit-learn's 8x8 handwritten digits, shipped with the wheel (works offline).

  Returns:
    A `Dataset` named 'digits', 10 classes, inputs `(8, 8, 1)` scaled to [0, 1]; 20% is
    held out as test, then 10% of the rest as validation.
  """
  from sklearn.datasets import load_digits as sk_load_digits  # pylint: disable=g-import-not-at-top
  bunch = sk_load_digits()
  images = (bunch.images.astype(np.float32) / 16.0)[..., None]
  return from_arrays("digits", (images, bunch.target.astype(np.int32)), num_classes=10)


def load_tfds(name: str, data_dir: str | None, download: bool = True) -> Dataset:
  """A TFDS dataset, read through `tfds.data_source`; prepared first if it is not yet.

  Args:
    name: one of `TFDS_NAMES`.
    data_dir: the TFDS data_dir it is (or is to be) prepared in; None for TFDS's default
      (~/tensorflow_datasets).
    download: whether a dataset that is not prepared may be downloaded and prepared here
      (it is only tried when `network_available()`).

  Returns:
    A `Dataset` of the official train and test splits, with 10% of train held out as
    validation.

  Raises:
    DataError: the dataset is not prepared in `data_dir` and cannot be downloaded here,
      or its download or preparation failed (the message says how to prepare it offline).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets)"
  offline = (f"prepare it once on a machine with network: `tfds build {name} "
             "--file_format=array_record --data_dir=DIR`, then pass --data_dir=DIR (data_dir=DIR "
             "from Python), or use 'digits' or 'idx:PATH', which work offline")
  try:
    sources = _data_sources(tfds, name, data_dir)
  except _NotPrepared:
    if not download or not network_available():
      reason = "" if download else " (downloads are off)"
      raise DataError(f"dataset {name!r} is not prepared in {where} and cannot be downloaded "
                      f"here{reason}; {offline}") from None
    absl_logging.info("dataset %s is not prepared in %s: downloading and preparing it once "
                      "through TFDS", name, where)
    try:
      tfds.builder(name, data_dir=data_dir).download_and_prepare(file_format="array_record")
      sources = _data_sources(tfds, name, data_dir)
    except Exception as e:  # pylint: disable=broad-except
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise DataError(f"downloading and preparing {name!r} through TFDS failed ({first}); "
                      f"{offline}") from None
  splits = {split: _read_source(source) for split, source in sources.items()}
  label_feature = sources["test"].dataset_info.features["label"]
  num_classes = getattr(label_feature, "num_classes", None)
  return from_arrays(name, splits["train"], splits["test"], num_classes=num_classes)


class _NotPrepared(Exception):
  """TFDS found no prepared copy of a dataset (it raises several types for that)."""


def _data_sources(tfds, name: str, data_dir: str | None) -> dict:
  """The train and test `tfds.data_source`s of a prepared dataset (never downloading)."""
  out = {}
  for split in ("train", "test"):
    try:
      with _quiet_absl():
        out[split] = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception:  # pylint: disable=broad-except
      raise _NotPrepared(name) from None
  return out


@contextlib.contextmanager
def _quiet_absl():
  """TFDS warns through absl while probing a missing dataset; the error says it all."""
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(verbosity)


def _read_source(source) -> tuple[np.ndarray, np.ndarray]:
  records = [source[i] for i in range(len(source))]
  images = np.stack([np.asarray(r["image"]) for r in records])
  return images, np.asarray([int(r["label"]) for r in records], np.int32)


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_NAME = re.compile(r"^(?P<split>.*?)[-_.]?(?P<kind>images|labels)[-_.]idx\d[-_.]ubyte(\.gz)?$")
_TEST_PREFIXES = ("t10k", "test")


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (optionally gzip-compressed) into a numpy array.

  Args:
    path: the file; a name ending in '.gz' is read with gzip.

  Returns:
    The array, shaped by the header's dimensions, of the header's type in native byte order.

  Raises:
    DataError: the file cannot be read, has a bad magic number, or is truncated or corrupt.
  """
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise DataError(f"cannot read IDX file {path}: {e}") from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise DataError(f"{path} is not an IDX file (bad magic number 0x{raw[:4].hex():0>8}; "
                    "expected 0x0000TTNN with type TT in 08 09 0B 0C 0D 0E)")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"{path} is truncated: its header promises {ndim} dimensions, the file "
                    f"ends after {len(raw)} bytes")
  dims = tuple(int(d) for d in np.frombuffer(raw[4:header], ">u4"))
  dtype = np.dtype(_IDX_DTYPES[raw[2]])
  expected = int(np.prod(dims)) * dtype.itemsize
  if len(raw) - header != expected:
    raise DataError(f"{path} is truncated or corrupt: header says {dims} "
                    f"({expected} bytes), file holds {len(raw) - header}")
  return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_pair(files: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
  """An images file and its labels file, checked: one line naming the file at fault.

  Args:
    files: `{"images": path, "labels": path}`, two IDX files.

  Returns:
    `(images, labels)`: images `[n, rows, cols, channels]` (3-d files get one channel) and
    int64 labels `[n]`.

  Raises:
    DataError: the shapes or counts do not fit, labels are not integers or are negative, or
      a floating-point pixel is NaN or infinite.
  """
  images, labels = read_idx(files["images"]), read_idx(files["labels"])
  if images.ndim not in (3, 4) or images.shape[0] == 0:
    raise DataError(f"{files['images']}: images must be [n, rows, cols] or "
                    f"[n, rows, cols, channels] with n > 0, the file holds {images.shape}")
  if labels.ndim != 1:
    raise DataError(f"{files['labels']}: labels must be one-dimensional [n], the file holds "
                    f"{labels.shape}")
  if labels.shape[0] != images.shape[0]:
    raise DataError(f"{files['labels']} holds {labels.shape[0]} labels but "
                    f"{os.path.basename(files['images'])} holds {images.shape[0]} images; "
                    "the counts must agree")
  if not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"{files['labels']}: labels must be integers (IDX type 0x08, 0x09, 0x0B or "
                    f"0x0C), the file holds {labels.dtype}")
  if labels.min() < 0:
    raise DataError(f"{files['labels']}: label {int(labels.min())} is outside the classes "
                    "(labels are 0..K-1)")
  if np.issubdtype(images.dtype, np.floating):
    bad = ~np.isfinite(images)
    if bad.any():
      first = int(np.argmax(bad.reshape(len(images), -1).any(axis=1)))
      raise DataError(f"{files['images']}: {int(bad.sum())} pixels are NaN or infinite (the "
                      f"first in image {first}); pixels must be finite")
  if images.ndim == 3:  # [n, rows, cols] -> one channel
    images = images[..., None]
  return images, labels.astype(np.int64)


def load_idx(path: str) -> Dataset:
  """A folder of IDX files as a `Dataset` (see the module docstring for the layout).

  Args:
    path: the folder; files named like `PREFIX-images-idx3-ubyte[.gz]` and
      `PREFIX-labels-idx1-ubyte[.gz]` pair up by prefix.

  Returns:
    A `Dataset` named `idx:PATH`. With a 't10k' or 'test' pair besides others, that pair is
    the test split and the first other pair (in file-name order) the training data; a single
    pair gets 20% held out as test. Either way 10% of the training data is held out as
    validation.

  Raises:
    DataError: no such folder, no complete pair, test labels outside the training classes,
      or several pairs none of which is a test pair.
  """
  if not os.path.isdir(path):
    raise DataError(f"idx:{path}: no such folder; pass idx:PATH with a folder of IDX files "
                    "such as train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz")
  found: dict[str, dict[str, str]] = {}
  for fname in sorted(os.listdir(path)):
    m = _IDX_NAME.match(fname)
    if m:
      found.setdefault(m["split"], {})[m["kind"]] = os.path.join(path, fname)
  pairs = {s: f for s, f in found.items() if set(f) == {"images", "labels"}}
  if not pairs:
    raise DataError(f"idx:{path}: no pair of *-images-idx3-ubyte[.gz] and "
                    "*-labels-idx1-ubyte[.gz] files found")

  name = f"idx:{path}"
  test_key = next((s for s in pairs if s.lower() in _TEST_PREFIXES), None)
  train_keys = [s for s in pairs if s != test_key]
  if test_key is not None and train_keys:
    train = read_pair(pairs[train_keys[0]])
    test = read_pair(pairs[test_key])
    classes = int(train[1].max()) + 1
    if int(test[1].max()) >= classes:
      raise DataError(f"{pairs[test_key]['labels']}: label {int(test[1].max())} is outside "
                      f"the {classes} classes of the training labels "
                      f"({pairs[train_keys[0]]['labels']}: 0..{classes - 1})")
    return from_arrays(name, train, test)
  if len(pairs) == 1:
    return from_arrays(name, read_pair(next(iter(pairs.values()))))
  raise DataError(f"idx:{path}: cannot tell train from test among prefixes "
                  f"{sorted(pairs)}; name the test files t10k-* or test-*")
