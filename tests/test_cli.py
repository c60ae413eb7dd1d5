"""experiments.evaluate as a user runs it: exit codes, outputs, nothing written on bad input."""

import json
import os
import subprocess
import sys

from absl.testing import absltest, parameterized

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_binary(module, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


class EvaluateBinaryTest(parameterized.TestCase):

  def test_runs_and_writes_outputs(self):
    out = self.create_tempdir().full_path
    proc = run_binary("experiments.evaluate", "--task=mlp_sigmoid", "--optimizer=adam",
                      "--num_steps=60", "--eval_every=30", "--seeds=0,1", f"--out_dir={out}")
    self.assertEqual(proc.returncode, 0, proc.stderr)
    self.assertIn("test_accuracy", proc.stdout)
    with open(os.path.join(out, "metrics.jsonl")) as f:
      lines = [json.loads(line) for line in f]
    self.assertLen(lines, 2 * 3)  # two seeds, steps 0, 30, 60
    self.assertEqual([l["step"] for l in lines[:3]], [0, 30, 60])
    self.assertBetween(lines[-1]["test_accuracy"], 0.0, 1.0)
    with open(os.path.join(out, "summary.json")) as f:
      summary = json.load(f)
    self.assertEqual(summary["over_seeds"]["test_accuracy"]["n"], 2)
    self.assertEqual(summary["config"]["seeds"], [0, 1])
    self.assertTrue(os.path.exists(os.path.join(out, "curves.png")))
    self.assertEmpty([f for f in os.listdir(out) if f.startswith(".tmp")])

  @parameterized.named_parameters(
      ("unknown_task", ["--task=resnet"], "--task=resnet"),
      ("unknown_optimizer", ["--optimizer=lion"], "unknown optimizer 'lion'; accepted:"),
      ("unknown_dataset", ["--dataset=imagenet"], "unknown dataset 'imagenet'; accepted:"),
      ("zero_steps", ["--num_steps=0"], "--num_steps=0"),
      ("bad_seeds", ["--seeds=1,x"], "--seeds must be distinct non-negative integers"),
      ("negative_lr", ["--learning_rate=-0.1"], "--learning_rate must be positive"),
      ("unknown_flag", ["--lr=0.1"], "Unknown command line flag 'lr'"),
      ("conv_on_quadratic_data", ["--task=quadratic", "--dataset=digits"], "makes its own data"),
      ("missing_idx", ["--dataset=idx:/no/such/folder"], "no such folder"),
      ("unprepared_tfds", ["--dataset=cifar10", "--data_dir=/nonexistent"],
       "tfds build cifar10"),
  )
  def test_bad_input_exits_2_with_one_line_and_writes_nothing(self, args, message):
    out = os.path.join(self.create_tempdir().full_path, "out")
    proc = run_binary("experiments.evaluate", *args, f"--out_dir={out}")
    self.assertEqual(proc.returncode, 2, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    self.assertLen(lines, 1, proc.stderr)
    self.assertIn(message, lines[0])
    self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
  absltest.main()
