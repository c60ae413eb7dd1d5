"""Reliability: non-finite guard, diverging optimizees, SIGKILL and resume, determinism."""

import json
import os
import re
import signal
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest
from flax import struct

from flatl2o import checkpoints, meta, optimizers, tasks
from flatl2o.tasks.base import ClassificationTask

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(unroll_length=5, num_inner_steps=20, meta_batch_size=2, validation_every=10,
             validation_horizon=20, validation_seeds=2, checkpoint_every=5, log_every=1)


@struct.dataclass
class FlakyTask(ClassificationTask):
  """A task whose loss and gradient are NaN when the batch starts with two given labels."""

  def loss(self, params, batch):
    _, labels = batch
    poisoned = (labels[0] == 0) & (labels[1] == 0)
    return super().loss(params, batch) * jnp.where(poisoned, jnp.nan, 1.0)


@struct.dataclass
class BrokenTask(ClassificationTask):
  """A task whose loss is always NaN."""

  def loss(self, params, batch):
    return super().loss(params, batch) * jnp.nan


def _as(cls, task):
  return cls(data=task.data, model=task.model, name=task.name, batch_size=task.batch_size)


class GuardTest(absltest.TestCase):

  @pytest.mark.slow  # a meta-training into a run directory
  def test_flaky_optimizees_are_skipped_and_reset(self):
    task = _as(FlakyTask, tasks.get("mlp_sigmoid", batch_size=16))
    config = meta.MetaTrainConfig(num_meta_iterations=40, **SMALL)
    result = meta.meta_train(optimizers.L2ODM(), task, config)
    last = result.history[-1]
    self.assertGreater(result.num_skipped, 0)
    self.assertGreater(last["num_resets"], 0)
    self.assertLess(result.num_skipped, 40)
    chex.assert_tree_all_finite(result.last_meta_params)
    self.assertEqual(sum(1 for h in result.history if not h["finite"]), result.num_skipped)

  def test_consecutive_non_finite_steps_stop_the_run_keeping_the_checkpoint(self):
    task = _as(BrokenTask, tasks.get("mlp_sigmoid", batch_size=16))
    run_dir = self.create_tempdir().full_path
    lopt = optimizers.L2ODM()
    config = meta.MetaTrainConfig(num_meta_iterations=40, max_consecutive_skipped=7, **SMALL)
    with self.assertRaisesRegex(meta.MetaTrainingDivergedError,
                                r"7 consecutive meta-steps \(up to meta-step 7\) had a "
                                r"non-finite .* last good checkpoint \(meta-step 5\)"):
      meta.meta_train(lopt, task, config, run_dir=run_dir)
    restored = meta.run_dir.RunCheckpointer(run_dir)
    self.assertEqual(restored.latest_step(), 5)
    self.assertFalse(os.path.exists(os.path.join(run_dir, "optimizer")))

  @pytest.mark.slow  # two meta-trainings
  def test_same_seed_same_bits(self):
    task = tasks.get("mlp_sigmoid", batch_size=16)
    config = meta.MetaTrainConfig(num_meta_iterations=12, **SMALL)
    a = meta.meta_train(optimizers.L2ODM(), task, config)
    b = meta.meta_train(optimizers.L2ODM(), task, config)
    chex.assert_trees_all_equal(a.last_meta_params, b.last_meta_params)
    self.assertEqual([h["meta_loss"] for h in a.history], [h["meta_loss"] for h in b.history])
    c = meta.meta_train(optimizers.L2ODM(), task,
                        meta.MetaTrainConfig(num_meta_iterations=12, seed=1, **SMALL))
    self.assertFalse(np.array_equal(jax.tree.leaves(a.last_meta_params)[0],
                                    jax.tree.leaves(c.last_meta_params)[0]))


META_ARGS = ["--num_meta_iterations=14", "--unroll_length=5", "--num_inner_steps=10",
             "--meta_batch_size=2", "--validation_every=4", "--validation_horizon=10",
             "--validation_seeds=1", "--checkpoint_every=2", "--log_every=1", "--batch_size=16"]


def _run(run_dir, stop_after_step=None, signum=signal.SIGKILL):
  """Runs experiments.meta_train; with stop_after_step, sends `signum` once that step is logged.

  Returns the stderr lines read after the signal (SIGINT / SIGTERM: the binary's last words).
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, "-m", "experiments.meta_train", *META_ARGS,
                           f"--run_dir={run_dir}"], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  if stop_after_step is None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return []
  for line in proc.stderr:
    if f"meta-step {stop_after_step}/" in line:
      proc.send_signal(signum)
      break
  rest = proc.stderr.read().splitlines()
  proc.wait(timeout=300)
  expected = -signal.SIGKILL if signum == signal.SIGKILL else 128 + signum
  assert proc.returncode == expected, (proc.returncode, rest)
  return rest


def _exported(run_dir):
  with np.load(os.path.join(run_dir, "optimizer", "meta_params.npz")) as npz:
    return {k: npz[k] for k in npz.files}


@pytest.mark.slow
class KillAndResumeTest(absltest.TestCase):

  def test_kills_and_interrupts_at_several_points_then_resume_equals_uninterrupted(self):
    reference = os.path.join(self.create_tempdir().full_path, "reference")
    _run(reference)
    interrupted = os.path.join(self.create_tempdir().full_path, "interrupted")
    # SIGKILL before the first checkpoint and between checkpoints (the steps since
    # the last checkpoint are redone); SIGINT / SIGTERM checkpoint the step reached.
    _run(interrupted, 1)
    for step, signum in ((3, signal.SIGINT), (8, signal.SIGTERM)):
      last_words = _run(interrupted, step, signum)
      self.assertNotIn("Traceback", "\n".join(last_words))
      reached = int(re.search(r"interrupted at meta-step (\d+); checkpoint saved in .*; "
                              r"rerun the same command to resume$", last_words[-1]).group(1))
      self.assertBetween(reached, step, step + 1)  # the signal lands in step or step + 1
      steps = os.listdir(os.path.join(interrupted, "checkpoints"))
      self.assertIn(str(reached), steps)  # a checkpoint between the regular ones (every 2)
    _run(interrupted)
    expected, got = _exported(reference), _exported(interrupted)
    self.assertEqual(expected.keys(), got.keys())
    for k in expected:
      np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    with open(os.path.join(interrupted, "metrics.jsonl")) as f:
      iterations = [json.loads(line)["iteration"] for line in f]
    self.assertEqual(iterations, list(range(1, 15)))
    with open(os.path.join(interrupted, "versions.json")) as f:
      versions = json.load(f)
    self.assertEqual(versions["packages"]["jax"], jax.__version__)


if __name__ == "__main__":
  absltest.main()
