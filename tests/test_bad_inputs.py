"""The bad-input catalogue: each wrong input gets one ValueError line saying what is accepted.

docs/reliability.md lists the same cases with the messages they produce.
"""

import json
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

import flatl2o
from flatl2o import checkpoints, data, meta, optimizers, tasks


def _export(lopt=None):
  lopt = lopt or optimizers.L2ODM(hidden_size=4)
  path = os.path.join(tempfile.mkdtemp(), "opt")
  flatl2o.save_optimizer(path, lopt, lopt.init(jax.random.key(0)))
  return path


def _edit_json(path, **changes):
  meta_path = os.path.join(path, "optimizer.json")
  with open(meta_path) as f:
    content = json.load(f)
  content.update(changes)
  with open(meta_path, "w") as f:
    json.dump(content, f)
  return path


def _truncate(path):
  arrays = os.path.join(path, "meta_params.npz")
  with open(arrays, "rb") as f:
    raw = f.read()
  with open(arrays, "wb") as f:
    f.write(raw[:100])
  return path


def _garbage(path):
  with open(os.path.join(path, "optimizer.json"), "w") as f:
    f.write("\x00garbage")
  return path


def _nan_images():
  x = np.ones((20, 4, 4, 1), np.float32)
  x[3, 0, 0, 0] = np.nan
  return x


def _resume_with(run_dir_and_config):
  run_dir, config, lopt = run_dir_and_config
  return meta.meta_train(lopt, tasks.get("quadratic"), config, run_dir=run_dir)


def _run_dir():
  run_dir = tempfile.mkdtemp()
  small = dict(unroll_length=2, num_inner_steps=4, meta_batch_size=1, num_meta_iterations=2,
               validation_every=2, validation_horizon=4, validation_seeds=1)
  meta.meta_train(optimizers.L2ODM(hidden_size=4), tasks.get("quadratic"),
                  meta.MetaTrainConfig(**small), run_dir=run_dir)
  return run_dir, small


def _transform_init(tree):
  lopt = optimizers.L2ODM()
  return lopt.transform(lopt.init(jax.random.key(0))).init(tree)


CATALOGUE = (
    ("unknown_dataset", lambda: data.load("imagenet"), "unknown dataset 'imagenet'; accepted"),
    ("missing_idx_folder", lambda: data.load("idx:/no/such"), "no such folder"),
    ("unprepared_tfds", lambda: data.load("mnist", data_dir=tempfile.mkdtemp()),
     r"is not prepared in [^()]*; prepare it .*tfds build mnist.* then pass --data_dir=DIR"),
    ("near_miss_optimizer", lambda: optimizers.get("adma"),
     "unknown optimizer 'adma' \\(did you mean 'adam'\\?\\); accepted"),
    ("near_miss_task", lambda: tasks.get("mlp_sigmiod"),
     "unknown task 'mlp_sigmiod' \\(did you mean 'mlp_sigmoid'\\?\\)"),
    ("near_miss_architecture", lambda: optimizers.learned("rnn_prop"),
     "\\(did you mean 'rnnprop'\\?\\)"),
    ("complex_leaf", lambda: _transform_init({"z": jnp.ones(2, jnp.complex64)}),
     r"leaf \['z'\] has dtype complex64; optimize complex parameters as their real and "
     "imaginary parts"),
    ("export_path_missing", lambda: flatl2o.load_optimizer("/no/such/export"),
     "/no/such/export does not exist; pass the folder written by save_optimizer"),
    ("nan_in_data", lambda: data.from_arrays("x", (_nan_images(), np.zeros(20, np.int32))),
     "1 examples contain NaN or infinite values"),
    ("unknown_task", lambda: tasks.get("resnet"), "unknown task 'resnet'; accepted"),
    ("conv_on_flat_input",
     lambda: tasks.get("conv", data.from_arrays("flat", (np.ones((9, 5)), np.arange(9) % 2))),
     "'conv' needs image inputs"),
    ("unknown_optimizer", lambda: optimizers.get("lion"), "unknown optimizer 'lion'; accepted"),
    ("unknown_architecture", lambda: optimizers.learned("velo"),
     "unknown learned optimizer 'velo'; accepted: l2o_dm, rnnprop, l2o_scale, mlp_lopt"),
    ("entropy_sgd_without_grad_fn", lambda: _entropy_sgd_update_without_grad_fn(),
     "entropy_sgd needs grad_fn="),
    ("curriculum_not_increasing",
     lambda: meta.MetaTrainConfig(curriculum=True, curriculum_horizons=(100, 40, 200)),
     r"curriculum_horizons must be increasing, got \[100, 40, 200\]"),
    ("imitation_ratio_above_one", lambda: meta.MetaTrainConfig(imitation_ratio=1.5),
     r"imitation_ratio must be a probability in \[0, 1\], got 1.5"),
    ("export_of_an_unknown_architecture",
     lambda: flatl2o.load_optimizer(_edit_json(_export(), architecture="l2o_future")),
     r"holds architecture 'l2o_future' .* which is not registered \(registered: .*\); import "
     r"the module that calls flatl2o.optimizers.register\('l2o_future', ...\) first"),
    ("register_twice", lambda: optimizers.register("adam", optimizers.get),
     "optimizer 'adam' is already registered .*; pick another name, or pass overwrite=True"),
    ("register_task_twice", lambda: tasks.register("conv", lambda dataset, batch_size: None),
     "task 'conv' is already registered; pick another name, or pass overwrite=True"),
    ("integer_leaf", lambda: _transform_init({"w": jnp.ones(2), "n": jnp.int32(3)}),
     r"leaf \['n'\] has dtype int32"),
    ("zero_unroll", lambda: meta.MetaTrainConfig(unroll_length=0),
     "unroll_length must be a positive integer"),
    ("zero_gamma", lambda: meta.RegularizerConfig(kind="entropy", entropy_gamma=0.0),
     "entropy_gamma must be a positive number"),
    ("negative_alpha", lambda: meta.RegularizerConfig(kind="hessian", alpha=-1.0),
     "alpha must be a positive number"),
    ("export_missing", lambda: flatl2o.load_optimizer(tempfile.mkdtemp()), "no optimizer.json"),
    ("export_truncated", lambda: flatl2o.load_optimizer(_truncate(_export())),
     "corrupted or truncated"),
    ("export_garbage", lambda: flatl2o.load_optimizer(_garbage(_export())),
     "optimizer.json is corrupted"),
    ("export_other_architecture",
     lambda: flatl2o.load_optimizer(_edit_json(_export(), architecture="mlp_lopt",
                                               hparams={})),
     "do not match architecture mlp_lopt"),
    ("export_other_hparams",
     lambda: flatl2o.load_optimizer(_edit_json(_export(), hparams={"hidden_size": 5})),
     "has shape .* expects"),
)


def _entropy_sgd_update_without_grad_fn():
  tx = optimizers.get("entropy_sgd")
  params = {"w": jnp.ones(3)}
  return tx.update(params, tx.init(params), params)


class CatalogueTest(parameterized.TestCase):

  @parameterized.named_parameters(*CATALOGUE)
  def test_one_clear_line(self, make_error, message):
    with self.assertRaisesRegex(ValueError, message) as caught:
      make_error()
    self.assertLen(str(caught.exception).splitlines(), 1)

  def test_run_directory_of_another_architecture_or_setting(self):
    run_dir, small = _run_dir()
    before = sorted(os.listdir(run_dir))
    for lopt, config, message in (
        (optimizers.MLPLOpt(), meta.MetaTrainConfig(**small),
         "optimizer.architecture was 'l2o_dm', now 'mlp_lopt'"),
        (optimizers.L2ODM(hidden_size=8), meta.MetaTrainConfig(**small),
         "optimizer.hparams.hidden_size was 4, now 8"),
        (optimizers.L2ODM(hidden_size=4), meta.MetaTrainConfig(**{**small, "seed": 3}),
         "config.seed was 0, now 3")):
      with self.assertRaisesRegex(checkpoints.CheckpointError, message):
        _resume_with((run_dir, config, lopt))
    self.assertEqual(sorted(os.listdir(run_dir)), before)

  def test_binary_refuses_an_export_of_an_unregistered_architecture(self):
    # tests/user_lopt.py's architecture, which the binary's process never imports.
    export = _edit_json(_export(), architecture="user_momentum")
    folder = self.create_tempdir().full_path
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", f"--optimizer={export}",
         f"--out_dir={os.path.join(folder, 'out')}", "--num_steps=5", "--seeds=0"],
        cwd=folder, capture_output=True, text=True, timeout=300, check=False,
        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=root))
    self.assertEqual(proc.returncode, 2, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    self.assertLen(lines, 1)
    self.assertRegex(lines[0], r"holds architecture 'user_momentum' .* which is not registered "
                     r"\(registered: l2o_dm, .*\); import the module that calls "
                     r"flatl2o.optimizers.register\('user_momentum', ...\) first")
    self.assertEqual(os.listdir(folder), [])  # nothing written, not even the out_dir

  def test_empty_pytree_is_fine(self):
    lopt = optimizers.MLPLOpt()
    tx = lopt.transform(lopt.init(jax.random.key(0)))
    self.assertEqual(tx.update({}, tx.init({}), {})[0], {})


if __name__ == "__main__":
  absltest.main()
