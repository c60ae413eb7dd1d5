"""Scale: the memory knob (blocked rematerialisation) and the meta-batch over many devices.

The multi-device tests run `tests/sharded_run.py` in processes of their own
with virtual CPU devices (`--xla_force_host_platform_device_count`), the only
way to have several devices on a CPU machine; two of them form a two-host run
through `jax.distributed` on the loopback address.
"""

import os
import socket
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from experiments import _cli
from flatl2o import meta, optimizers, tasks
from flatl2o.meta import config as config_lib
from flatl2o.meta import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RematBlockTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.task = tasks.get("mlp_sigmoid", batch_size=32)

  def _unroll(self, lopt, block, **kwargs):
    config = meta.MetaTrainConfig(unroll_length=10, num_inner_steps=20, meta_batch_size=2,
                                  remat_block_length=block, **kwargs)
    meta_params = lopt.init(jax.random.key(0))
    states = meta.init_meta_batch(lopt, config, self.task, meta_params, jax.random.key(1))
    fn = jax.jit(jax.value_and_grad(
        lambda p: meta.unroll(lopt, self.task, config, p, states, jax.random.key(3)),
        has_aux=True))
    (loss, (new_states, traces)), grads = fn(meta_params)
    return loss, grads, new_states, traces

  @parameterized.named_parameters(
      ("l2o_dm_entropy", "l2o_dm", {"regularizer": meta.RegularizerConfig(kind="entropy")}),
      ("l2o_scale", "l2o_scale", {"meta_loss": "log_ratio"}),
  )
  @pytest.mark.slow  # two compilations of an unroll per case
  def test_blocks_give_the_same_meta_gradient_state_and_losses(self, name, kwargs):
    lopt = optimizers.learned(name)
    chex.assert_trees_all_close(self._unroll(lopt, 5, **kwargs), self._unroll(lopt, 1, **kwargs),
                                rtol=1e-5, atol=1e-6)

  @pytest.mark.slow  # compiles the meta-step twice
  def test_blocks_cut_the_compiled_temporary_memory(self):
    lopt = optimizers.L2ODM()
    temp = {}
    for block in (1, 8):
      config = meta.MetaTrainConfig(unroll_length=64, num_inner_steps=64, meta_batch_size=4,
                                    remat_block_length=block)
      meta_params = lopt.init(jax.random.key(0))
      states = jax.eval_shape(lambda c=config: meta.init_meta_batch(
          lopt, c, self.task, meta_params, jax.random.key(1)))
      compiled = meta.meta_step.lower(lopt, config, self.task, meta_params,
                                      meta.meta_optimizer(config).init(meta_params), states,
                                      jax.random.key(2)).compile()
      temp[block] = compiled.memory_analysis().temp_size_in_bytes
    # 64 stored states against 8 + 8: at least 2.5x less with everything else counted.
    self.assertGreater(temp[1], 2.5 * temp[8], temp)

  @parameterized.parameters((20, 4), (200, 10), (7, 1), (1, 1), (64, 8))
  def test_suggested_block_minimises_stored_states(self, unroll, block):
    self.assertEqual(config_lib.suggest_remat_block_length(unroll), block)

  @parameterized.parameters(
      ({"remat_block_length": 3}, r"remat_block_length \(3\) must divide unroll_length \(20\); "
                                  r"e.g. 4"),
      ({"remat_block_length": 0}, "remat_block_length must be a positive integer, got 0"),
      ({"num_devices": 0}, "num_devices must be a positive integer, got 0"),
  )
  def test_bad_config(self, kwargs, message):
    with self.assertRaisesRegex(ValueError, message):
      meta.MetaTrainConfig(**kwargs)

  @pytest.mark.slow  # meta-trains into a run directory twice
  def test_block_length_is_not_part_of_the_run_identity(self):
    run_dir = self.create_tempdir().full_path
    small = dict(unroll_length=4, num_inner_steps=8, meta_batch_size=1, num_meta_iterations=2,
                 validation_every=2, validation_horizon=8, validation_seeds=1,
                 checkpoint_every=2)
    meta.meta_train(optimizers.L2ODM(), self.task, meta.MetaTrainConfig(**small),
                    run_dir=run_dir)
    result = meta.meta_train(optimizers.L2ODM(), self.task, meta.MetaTrainConfig(
        **{**small, "num_meta_iterations": 4}, remat_block_length=2), run_dir=run_dir)
    self.assertEqual(result.resumed_from, 2)


class DeviceCountTest(parameterized.TestCase):

  @parameterized.parameters((None, 12, 8, 6), (None, 4, 8, 4), (None, 7, 8, 7), (None, 5, 1, 1),
                            (2, 8, 8, 2), (8, 8, 8, 8))
  def test_resolved_count(self, requested, meta_batch, available, expected):
    self.assertEqual(sharding.resolve_num_devices(requested, meta_batch, available), expected)

  @parameterized.parameters(
      (16, 8, 8, "num_devices=16 but only 8 devices are present; accepted: 1 to 8"),
      (2, 4, 1, "num_devices=2 but only 1 device is present; accepted: 1 to 1"),
      (3, 8, 8, "num_devices=3 does not divide meta_batch_size=8; accepted here: 1, 2, 4, 8"),
  )
  def test_bad_count(self, requested, meta_batch, available, message):
    with self.assertRaisesWithLiteralMatch(ValueError, message):
      sharding.resolve_num_devices(requested, meta_batch, available)

  def test_meta_train_refuses_more_devices_than_present(self):
    with self.assertRaisesRegex(ValueError, "but only 1 device is present"):
      meta.meta_train(optimizers.L2ODM(), tasks.get("mlp_sigmoid"),
                      meta.MetaTrainConfig(meta_batch_size=4, num_devices=4))

  @parameterized.parameters(
      (("127.0.0.1:1234", None, None), "missing --num_processes, --process_id"),
      (("localhost", 2, 0), "--coordinator_address must be HOST:PORT"),
      (("127.0.0.1:1234", 2, 2), "--process_id must be in 0..1 for --num_processes=2, got 2"),
  )
  def test_bad_multi_host_settings(self, settings, message):
    with self.assertRaisesRegex(ValueError, message):
      _cli.initialize_distributed(*settings)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
class ManyDevicesTest(absltest.TestCase):
  """One device, eight devices (interrupted and resumed), two hosts of four: one result."""

  def _start(self, mode, devices, out, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                          + f" --xla_force_host_platform_device_count={devices}").strip())
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "sharded_run.py"),
                             f"--mode={mode}", f"--out={out}", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

  def _finish(self, proc):
    output, _ = proc.communicate(timeout=600)
    self.assertEqual(proc.returncode, 0, output[-3000:])
    return output

  def _two_hosts(self, tmp, out, attempts=2):
    """Two processes of four devices joined through jax.distributed; returns the run dir.

    Gloo gives a process 30 s to reach the first collective after the other: on a machine
    loaded by other tests (the smoke study beside it), one process can still be compiling
    then. That timeout, and only it, is retried once in a fresh folder.
    """
    for attempt in range(attempts):
      address = f"127.0.0.1:{_free_port()}"
      hosts_dir = os.path.join(tmp, f"hosts{attempt}")
      hosts = [self._start("hosts", 4, out[f"host{i}"], f"--coordinator={address}",
                           f"--process_id={i}", f"--run_dir={hosts_dir}") for i in range(2)]
      outputs = [(proc, proc.communicate(timeout=600)[0]) for proc in hosts]
      late = any("Gloo context initialization failed: DEADLINE_EXCEEDED" in o
                 for _, o in outputs)
      if late and attempt + 1 < attempts:
        continue
      for proc, output in outputs:
        self.assertEqual(proc.returncode, 0, output[-3000:])
      return hosts_dir

  def test_sharded_runs_end_with_the_meta_parameters_of_one_device(self):
    tmp = self.create_tempdir().full_path
    out = {m: os.path.join(tmp, f"{m}.npz") for m in ("one", "eight", "host0", "host1")}
    one = self._start("one", 1, out["one"])
    eight = self._finish(self._start("eight", 8, out["eight"],
                                     f"--run_dir={os.path.join(tmp, 'eight')}"))
    self._finish(one)
    self.assertIn("num_devices=8 does not divide meta_batch_size=12", eight)
    hosts_dir = self._two_hosts(tmp, out)

    reference = np.load(out["one"])
    for name in ("eight", "host0", "host1"):
      got = np.load(out[name])
      difference = max(float(np.max(np.abs(got[k] - reference[k]))) for k in reference.files)
      self.assertLessEqual(difference, 1e-4, name)
      self.assertGreater(max(float(np.max(np.abs(reference[k]))) for k in reference.files), 0)
    # Only process 0 wrote the metrics and the export; orbax wrote one checkpoint per step.
    with open(os.path.join(hosts_dir, "metrics.jsonl")) as f:
      self.assertEqual([int(line.split('"iteration": ')[1].split(",")[0]) for line in f],
                       [5, 10])
    self.assertTrue(os.path.exists(os.path.join(hosts_dir, "optimizer", "optimizer.json")))
    self.assertEqual(sorted(os.listdir(os.path.join(hosts_dir, "checkpoints"))), ["10", "5"])

  def test_pes_split_over_eight_devices_and_resumed_matches_one_device(self):
    """PES's runs are split by device, its noise sums shared; both are checkpointed."""
    tmp = self.create_tempdir().full_path
    out = {m: os.path.join(tmp, f"{m}.npz") for m in ("one", "eight")}
    one = self._start("one", 1, out["one"], "--estimator=pes")
    self._finish(self._start("eight", 8, out["eight"], "--estimator=pes",
                             f"--run_dir={os.path.join(tmp, 'eight')}"))
    self._finish(one)
    reference, got = np.load(out["one"]), np.load(out["eight"])
    difference = max(float(np.max(np.abs(got[k] - reference[k]))) for k in reference.files)
    self.assertLessEqual(difference, 1e-4)


if __name__ == "__main__":
  absltest.main()
