"""Exported learned optimizers: round trip, and every way a file can be wrong."""

import json
import os
import stat

import chex
import jax
import jax.numpy as jnp
from absl.testing import absltest, parameterized

import flatl2o
from flatl2o import checkpoints, optimizers, report


class ExportTest(parameterized.TestCase):

  def _export(self, lopt=None):
    lopt = lopt or optimizers.L2ODM(hidden_size=6)
    meta_params = jax.tree.map(lambda x: x + 0.01, lopt.init(jax.random.key(3)))
    path = os.path.join(self.create_tempdir().full_path, "opt")
    flatl2o.save_optimizer(path, lopt, meta_params)
    return path, lopt, meta_params

  @parameterized.parameters(optimizers.L2ODM(hidden_size=6), optimizers.MLPLOpt(decays=(0.9,)),
                            *[optimizers.learned(n) for n in optimizers.learned_names()])
  def test_round_trip(self, lopt):
    path, lopt, meta_params = self._export(lopt)
    tx = flatl2o.load_optimizer(path)
    params = {"w": jnp.linspace(-1, 1, 7)}
    expected, _ = lopt.transform(meta_params).update(params, lopt.transform(meta_params).init(params), params)
    got, _ = tx.update(params, tx.init(params), params)
    chex.assert_trees_all_equal(got, expected)
    self.assertEqual(sorted(os.listdir(os.path.dirname(path))), ["opt"])  # no temp left

  def test_overwrites_an_export_but_not_a_foreign_folder(self):
    path, lopt, meta_params = self._export()
    flatl2o.save_optimizer(path, lopt, meta_params)  # re-export in place is fine
    foreign = self.create_tempdir()
    foreign.create_file("data.txt")
    with self.assertRaisesRegex(checkpoints.CheckpointError, "is not an exported optimizer"):
      flatl2o.save_optimizer(foreign.full_path, lopt, meta_params)
    self.assertEqual(os.listdir(foreign.full_path), ["data.txt"])

  def test_missing(self):
    with self.assertRaisesRegex(checkpoints.CheckpointError, "no optimizer.json"):
      flatl2o.load_optimizer(self.create_tempdir().full_path)

  def test_truncated_arrays(self):
    path, _, _ = self._export()
    arrays = os.path.join(path, "meta_params.npz")
    with open(arrays, "rb") as f:
      raw = f.read()
    with open(arrays, "wb") as f:
      f.write(raw[: len(raw) // 2])
    with self.assertRaisesRegex(checkpoints.CheckpointError, "corrupted or truncated"):
      flatl2o.load_optimizer(path)

  def test_garbage_description(self):
    path, _, _ = self._export()
    with open(os.path.join(path, "optimizer.json"), "wb") as f:
      f.write(b"\x00\xffgarbage")
    with self.assertRaisesRegex(checkpoints.CheckpointError, "optimizer.json is corrupted"):
      flatl2o.load_optimizer(path)

  def test_outputs_get_the_mode_of_the_umask(self):
    # mkstemp / mkdtemp make 0600 / 0700 entries; renamed into place they must
    # look like any file the user's umask would give (0640 / 0750 here).
    old = os.umask(0o027)
    self.addCleanup(os.umask, old)
    folder = self.create_tempdir().full_path
    report.write_json(os.path.join(folder, "summary.json"), {"x": 1})
    lopt = optimizers.L2ODM(hidden_size=2)
    flatl2o.save_optimizer(os.path.join(folder, "opt"), lopt, lopt.init(jax.random.key(0)))
    mode = lambda p: stat.S_IMODE(os.stat(os.path.join(folder, p)).st_mode)
    self.assertEqual(mode("summary.json"), 0o640)
    self.assertEqual(mode("opt"), 0o750)
    self.assertEqual(mode("opt/optimizer.json"), 0o640)

  @parameterized.parameters(
      ({"architecture": "l2o_future", "written_by": "flatl2o 9.0"},
       r"holds architecture 'l2o_future' \(written by flatl2o 9.0\), which is not registered "
       r"\(registered: l2o_dm, .*\); import the module that calls "
       r"flatl2o.optimizers.register\('l2o_future', ...\) first, or upgrade flatl2o"),
      ({"architecture": "l2o_scale"}, "takes no hyper-parameter 'hidden_size'"),
      ({"hparams": {"hidden_size": 7, "num_layers": 2, "preprocess_k": 5.0,
                    "output_scale": 0.1}}, "has shape .* expects"),
      ({"hparams": {"hidden_size": -1}}, "hidden_size must be a positive integer"),
      ({"version": 99}, "format version 99 .* reads version 1; upgrade flatl2o"),
      ({"version": 0}, "format version 0 .* reads version 1$"),
      ({"format": "something-else"}, "not a flatl2o optimizer description"),
  )
  def test_mismatched_description(self, change, message):
    path, _, _ = self._export()
    meta_path = os.path.join(path, "optimizer.json")
    with open(meta_path) as f:
      meta = json.load(f)
    meta.update(change)
    with open(meta_path, "w") as f:
      json.dump(meta, f)
    with self.assertRaisesRegex(checkpoints.CheckpointError, message):
      flatl2o.load_optimizer(path)


if __name__ == "__main__":
  absltest.main()
