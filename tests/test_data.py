"""Datasets: splits, IDX parsing, TFDS through mock data, batch sampling inside jit."""

import gzip
import os
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
from unittest import mock
import tensorflow_datasets as tfds
from absl.testing import absltest, parameterized

from flatl2o import data


def _write_idx(path, array, compress):
  codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">f4"): 0x0D}
  header = bytes([0, 0, codes[array.dtype], array.ndim])
  header += np.asarray(array.shape, ">u4").tobytes()
  opener = gzip.open if compress else open
  with opener(path, "wb") as f:
    f.write(header + array.tobytes())


def _rows(x):
  return {r.tobytes() for r in np.asarray(x).reshape(len(x), -1)}


class SplitTest(parameterized.TestCase):

  @parameterized.parameters((100, 0.1), (1797, 0.2), (7, 0.5))
  def test_held_out_split_partitions_indices(self, n, fraction):
    kept, held = data.held_out_split(n, fraction, seed=3)
    self.assertEmpty(np.intersect1d(kept, held))
    np.testing.assert_array_equal(np.sort(np.concatenate([kept, held])), np.arange(n))
    self.assertEqual(len(held), max(1, round(n * fraction)))
    again, _ = data.held_out_split(n, fraction, seed=3)
    np.testing.assert_array_equal(kept, again)

  def test_from_arrays_splits_do_not_overlap(self):
    x = np.arange(500 * 3, dtype=np.float32).reshape(500, 3)  # every row unique
    y = np.arange(500) % 4
    ds = data.from_arrays("toy", (x, y))
    splits = [_rows(ds.split(s)[0]) for s in data.SPLITS]
    self.assertEqual(sum(map(len, splits)), 500)
    self.assertEmpty(splits[0] & splits[1])
    self.assertEmpty(splits[0] & splits[2])
    self.assertEmpty(splits[1] & splits[2])
    self.assertEqual(ds.num_classes, 4)

  def test_digits_is_embedded_and_split(self):
    ds = data.load("digits")
    self.assertEqual(ds.input_shape, (8, 8, 1))
    self.assertEqual(ds.num_classes, 10)
    counts = [ds.num_examples(s) for s in data.SPLITS]
    self.assertEqual(sum(counts), 1797)
    self.assertEqual(counts[2], 359)
    self.assertBetween(float(ds.train_x.min()), 0.0, 0.0)
    self.assertBetween(float(ds.train_x.max()), 0.9, 1.0)

  @parameterized.parameters("nope", "imagenet", "idx")
  def test_unknown_name(self, name):
    with self.assertRaisesRegex(data.DataError, "accepted: digits, mnist"):
      data.load(name)

  def test_nan_in_data_is_rejected(self):
    x = np.ones((10, 4), np.float32)
    x[3, 1] = np.nan
    with self.assertRaisesRegex(data.DataError, "1 examples contain NaN"):
      data.from_arrays("bad", (x, np.zeros(10, np.int64)))

  def test_bad_labels_are_rejected(self):
    with self.assertRaisesRegex(data.DataError, "labels must be non-negative integers"):
      data.from_arrays("bad", (np.ones((4, 2)), np.array([0.0, 1.0, 0.0, 1.0])))
    with self.assertRaisesRegex(data.DataError, "out of range"):
      data.from_arrays("bad", (np.ones((4, 2)), np.array([0, 1, 2, 3])), num_classes=3)


class SamplingTest(absltest.TestCase):

  def test_sample_batch_inside_jit(self):
    x = np.arange(200, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    ds = data.from_arrays("toy", (x, np.arange(200) % 5), test=(x[:10], np.arange(10) % 5))

    @jax.jit
    def draw(ds, key):
      return ds.sample_batch(key, 64)

    inputs, labels = draw(ds, jax.random.key(0))
    chex.assert_shape(inputs, (64, 2))
    chex.assert_shape(labels, (64,))
    train_rows = _rows(ds.train_x)
    self.assertTrue(_rows(inputs) <= train_rows)  # drawn from the train split only
    # Inputs and labels stay paired: label == row value mod 5.
    np.testing.assert_array_equal(np.asarray(inputs[:, 0]).astype(int) % 5, labels)
    other, _ = draw(ds, jax.random.key(1))
    self.assertFalse(np.array_equal(inputs, other))
    self.assertEqual(draw._cache_size(), 1)  # data is an argument, not a constant

  def test_sample_batch_in_scan_makes_no_host_to_device_transfer(self):
    ds = data.load("digits")

    @jax.jit
    def mean_of_batches(ds, key):
      def body(total, k):
        x, _ = ds.sample_batch(k, 16)
        return total + x.mean(), None
      total, _ = jax.lax.scan(body, jnp.float32(0), jax.random.split(key, 50))
      return total / 50

    key = jax.random.key(0)
    mean_of_batches(ds, key).block_until_ready()  # compiles
    with jax.transfer_guard_host_to_device("disallow"):
      value = float(mean_of_batches(ds, key))  # batches drawn on the device: no transfer
      # The guard does see transfers: the same call with host-side data is refused.
      with self.assertRaisesRegex(Exception, "Disallowed host-to-device transfer"):
        mean_of_batches(ds.replace(train_x=np.asarray(ds.train_x)), key).block_until_ready()
    self.assertAlmostEqual(value, float(ds.train_x.mean()), delta=0.02)


class IdxTest(parameterized.TestCase):

  def _folder(self, prefixes, n=50, compress=True):
    folder = tempfile.mkdtemp(dir=self.create_tempdir().full_path)
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for prefix in prefixes:
      images = rng.integers(0, 256, (n, 6, 5), dtype=np.uint8)
      labels = rng.integers(0, 10, n).astype(np.uint8)
      _write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), images, compress)
      _write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), labels, compress)
    return folder

  @parameterized.parameters(True, False)
  def test_train_and_test_files(self, compress):
    ds = data.load("idx:" + self._folder(["train", "t10k"], compress=compress))
    self.assertEqual(ds.input_shape, (6, 5, 1))
    self.assertEqual(ds.num_examples("test"), 50)
    self.assertEqual(ds.num_examples("train") + ds.num_examples("validation"), 50)
    self.assertBetween(float(ds.train_x.max()), 0.5, 1.0)  # uint8 scaled to [0, 1]

  def test_single_split_holds_out_test(self):
    ds = data.load("idx:" + self._folder(["t10k"], n=100))
    self.assertEqual(ds.num_examples("test"), 20)
    self.assertEqual(ds.num_examples("validation"), 8)
    self.assertEqual(ds.num_examples("train"), 72)
    self.assertEmpty(_rows(ds.train_x) & _rows(ds.test_x))

  def test_truncated_file(self):
    folder = self._folder(["train"])
    path = os.path.join(folder, "train-images-idx3-ubyte.gz")
    with gzip.open(path, "rb") as f:
      raw = f.read()
    with gzip.open(path, "wb") as f:
      f.write(raw[:-7])
    with self.assertRaisesRegex(data.DataError, "truncated or corrupt"):
      data.load("idx:" + folder)

  def test_garbage_file(self):
    folder = self._folder(["train"], compress=False)
    with open(os.path.join(folder, "train-labels-idx1-ubyte"), "wb") as f:
      f.write(b"hello world")
    with self.assertRaisesRegex(data.DataError, "not an IDX file"):
      data.load("idx:" + folder)

  def _write(self, folder, name, array):
    _write_idx(os.path.join(folder, name), array, compress=False)
    return os.path.join(folder, name)

  @parameterized.named_parameters(
      ("magic", "magic", "train-images-idx3-ubyte",
       r"/train-images-idx3-ubyte is not an IDX file \(bad magic number 0x00001503; expected"),
      ("count", "count", "train-labels-idx1-ubyte",
       r"/train-labels-idx1-ubyte holds 49 labels but train-images-idx3-ubyte holds 50 "
       "images; the counts must agree"),
      ("negative_label", "negative_label", "train-labels-idx1-ubyte",
       r"/train-labels-idx1-ubyte: label -1 is outside the classes"),
      ("test_label", "test_label", "t10k-labels-idx1-ubyte",
       r"/t10k-labels-idx1-ubyte: label 12 is outside the 10 classes of the training labels "
       r"\(.*/train-labels-idx1-ubyte: 0..9\)"),
      ("float_labels", "float_labels", "train-labels-idx1-ubyte",
       r"/train-labels-idx1-ubyte: labels must be integers"),
      ("nan", "nan", "train-images-idx3-ubyte",
       r"/train-images-idx3-ubyte: 2 pixels are NaN or infinite \(the first in image 3\)"),
      ("header", "header", "train-images-idx3-ubyte", r"/train-images-idx3-ubyte is truncated: its header"),
      ("body", "body", "t10k-images-idx3-ubyte",
       r"/t10k-images-idx3-ubyte is truncated or corrupt: header says \(50, 6, 5\)"),
  )
  def test_bad_file_is_one_line_naming_it(self, kind, name, pattern):
    folder = self._folder(["train", "t10k"], compress=False)
    path = os.path.join(folder, name)
    labels = np.arange(50, dtype=np.uint8) % 10
    if kind == "magic":
      with open(path, "r+b") as f:
        f.write(bytes([0, 0, 0x15, 3]))
    elif kind == "count":
      self._write(folder, name, labels[:49])
    elif kind == "negative_label":
      self._write(folder, name, np.where(labels == 3, -1, labels).astype(np.int8))
    elif kind == "test_label":
      self._write(folder, name, np.where(labels == 3, 12, labels).astype(np.uint8))
    elif kind == "float_labels":
      self._write(folder, name, labels.astype(">f4"))
    elif kind == "nan":
      images = np.random.default_rng(0).random((50, 6, 5)).astype(">f4")
      images[3, 1, 1], images[7, 0, 0] = np.nan, np.inf
      self._write(folder, name, images)
    elif kind == "header":
      with open(path, "r+b") as f:
        f.truncate(9)
    else:
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 1)
    with self.assertRaisesRegex(data.DataError, pattern) as e:
      data.load("idx:" + folder)
    self.assertNotIn("\n", str(e.exception))
    self.assertIsInstance(e.exception, ValueError)  # the binaries: one line, exit 2

  def test_float_images_load(self):
    folder = self._folder(["train"], compress=False)
    self._write(folder, "train-images-idx3-ubyte",
                np.random.default_rng(0).random((50, 6, 5)).astype(">f4"))
    self.assertEqual(data.load("idx:" + folder).input_shape, (6, 5, 1))

  def test_missing_folder_and_empty_folder(self):
    with self.assertRaisesRegex(data.DataError, "no such folder"):
      data.load("idx:/definitely/not/here")
    with self.assertRaisesRegex(data.DataError, "no pair of"):
      data.load("idx:" + self.create_tempdir().full_path)


class TfdsTest(parameterized.TestCase):

  @parameterized.parameters(("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3)))
  def test_mock_data_source(self, name, shape):
    with tfds.testing.mock_data(num_examples=60):
      ds = data.load(name)
    self.assertEqual(ds.input_shape, shape)
    self.assertEqual(ds.num_classes, 10)
    self.assertEqual(ds.num_examples("test"), 60)
    self.assertEqual(ds.num_examples("train") + ds.num_examples("validation"), 60)

  def test_not_prepared_says_how(self):
    with self.assertRaisesRegex(data.DataError, "tfds build fashion_mnist"):
      data.load("fashion_mnist", data_dir=self.create_tempdir().full_path)

  def test_not_prepared_is_downloaded_and_prepared_once_when_there_is_network(self):
    from flatl2o.data import sources  # pylint: disable=g-import-not-at-top
    real = tfds.data_source
    calls = []

    def not_prepared_until_built(name, **kwargs):  # what TFDS does before the first build
      if not calls:
        raise FileNotFoundError(f"{name} is not prepared")
      return real(name, **kwargs)

    def download_and_prepare(builder, **kwargs):
      calls.append((builder.name, kwargs))

    real_builder, built_in = tfds.builder, []

    def builder(name, **kwargs):
      built_in.append(kwargs.get("data_dir"))
      return real_builder(name, **kwargs)

    data_dir = self.create_tempdir().full_path
    with tfds.testing.mock_data(num_examples=30), \
        mock.patch.object(sources, "network_available", lambda: True), \
        mock.patch.object(tfds, "data_source", not_prepared_until_built), \
        mock.patch.object(tfds, "builder", builder), \
        mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare",
                          download_and_prepare):
      ds = data.load("fashion_mnist", data_dir=data_dir)
    self.assertEqual(calls, [("fashion_mnist", {"file_format": "array_record"})])
    self.assertEqual(built_in, [data_dir])
    self.assertEqual((ds.input_shape, ds.num_examples("test")), ((28, 28, 1), 30))

  @parameterized.parameters(
      ({"FLATL2O_OFFLINE": "1"}, None),  # the tests' own setting (conftest)
      ({"FLATL2O_OFFLINE": ""}, OSError("no route to host")))  # no network
  def test_without_network_one_line_says_how_to_prepare_offline(self, env, connect_error):
    from flatl2o.data import sources  # pylint: disable=g-import-not-at-top
    connect = mock.Mock(side_effect=connect_error)
    with mock.patch.dict(os.environ, env), \
        mock.patch("socket.create_connection", connect), \
        mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare") as prepare:
      with self.assertRaisesRegex(
          data.DataError, r"^dataset 'cifar10' is not prepared in \S+ and cannot be downloaded "
          r"here; prepare it once on a machine with network: `tfds build cifar10 "
          r"--file_format=array_record --data_dir=DIR`[^\n]*$"):
        data.load("cifar10", data_dir=self.create_tempdir().full_path)
    prepare.assert_not_called()
    self.assertEqual(connect.call_count, 0 if connect_error is None else 1)

  def test_a_failed_download_is_one_line(self):
    from flatl2o.data import sources  # pylint: disable=g-import-not-at-top
    failing = mock.Mock(side_effect=ConnectionResetError("connection reset\nby peer"))
    with mock.patch.object(sources, "network_available", lambda: True), \
        mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare", failing):
      with self.assertRaisesRegex(data.DataError, r"^downloading and preparing 'mnist' through "
                                  r"TFDS failed \(connection reset\); prepare it once[^\n]*$"):
        data.load("mnist", data_dir=self.create_tempdir().full_path)

  def test_no_tensorflow_import(self):
    import sys  # pylint: disable=g-import-not-at-top
    with tfds.testing.mock_data(num_examples=8):
      data.load("mnist")
    self.assertNotIn("tensorflow", sys.modules)


if __name__ == "__main__":
  absltest.main()
