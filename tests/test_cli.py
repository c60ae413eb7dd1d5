"""experiments.evaluate as a user runs it: exit codes, outputs, nothing written on bad input."""

import json
import os
import subprocess
import sys

import pytest
from absl.testing import absltest, parameterized

from flatl2o import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_binary(module, *args, cwd=ROOT, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


class EvaluateBinaryTest(parameterized.TestCase):

  @pytest.mark.slow  # the evaluate binary trained end to end
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
    for measure in ("hessian_trace", "top_eigenvalue", "local_entropy_gap"):
      self.assertGreater(summary["over_seeds"][measure]["mean"], 0.0)
    self.assertEqual(summary["config"]["seeds"], [0, 1])
    self.assertTrue(os.path.exists(os.path.join(out, "curves.png")))
    with open(os.path.join(out, "table.md")) as f:
      rows = f.read().splitlines()
    self.assertEqual(rows[2].split(" | ")[:2], ["| optimizer", "test acc."])
    self.assertTrue(rows[4].startswith(f"| {summary['label']} | "), rows)
    self.assertRegex(proc.stderr.splitlines()[0], r"adam \(lr 0.01, default\) on mlp_sigmoid / "
                     r"digits: 2 seeds x 60 steps; the first seed compiles")  # before any seed
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


TINY_META = ["--num_meta_iterations=4", "--unroll_length=5", "--num_inner_steps=10",
             "--meta_batch_size=2", "--validation_every=2", "--validation_horizon=10",
             "--validation_seeds=1", "--checkpoint_every=2", "--batch_size=16"]


@pytest.mark.slow  # the evaluate binary, several runs
class EvaluateFoldersTest(absltest.TestCase):

  def test_each_configuration_gets_its_folder_and_none_is_overwritten(self):
    cwd = self.create_tempdir().full_path
    quick = ["--num_steps=20", "--eval_every=10", "--seeds=0"]
    for args in (["--learning_rate=0.1"], []):
      proc = run_binary("experiments.evaluate", "--optimizer=adam", *args, *quick, cwd=cwd)
      self.assertEqual(proc.returncode, 0, proc.stderr)
    folders = sorted(os.listdir(os.path.join(cwd, "runs", "evaluate")))
    self.assertEqual(folders, ["mlp_sigmoid-digits-adam", "mlp_sigmoid-digits-adam-lr0.1"])
    labels = []
    for folder in folders:
      with open(os.path.join(cwd, "runs", "evaluate", folder, "summary.json")) as f:
        labels.append(json.load(f)["label"])
    self.assertEqual(labels, ["adam (lr 0.01, default)", "adam (lr 0.1)"])

    taken = os.path.join(cwd, "runs", "evaluate", folders[1])
    before = {f: os.path.getmtime(os.path.join(taken, f)) for f in os.listdir(taken)}
    proc = run_binary("experiments.evaluate", "--optimizer=sgd", *quick, f"--out_dir={taken}",
                      cwd=cwd)
    self.assertEqual(proc.returncode, 2, proc.stderr)
    self.assertLen(proc.stderr.strip().splitlines(), 1, proc.stderr)
    self.assertIn("holds the results of another configuration (optimizer was 'adam', now "
                  "'sgd'; learning_rate was 0.1, now None)", proc.stderr)
    self.assertEqual(before, {f: os.path.getmtime(os.path.join(taken, f))
                              for f in os.listdir(taken)})


class MetaTrainBinaryTest(parameterized.TestCase):

  @pytest.mark.slow  # meta-trains through the binary, twice
  def test_train_resume_export_and_evaluate(self):
    run_dir = os.path.join(self.create_tempdir().full_path, "run")
    proc = run_binary("experiments.meta_train", *TINY_META, f"--run_dir={run_dir}")
    self.assertEqual(proc.returncode, 0, proc.stderr)
    self.assertIn("exported", proc.stdout)
    self.assertTrue(os.path.isfile(os.path.join(run_dir, "optimizer", "optimizer.json")))
    self.assertIn("meta-step 4/4", proc.stderr)  # the progress line
    again = run_binary("experiments.meta_train", *TINY_META, f"--run_dir={run_dir}")
    self.assertEqual(again.returncode, 0, again.stderr)
    self.assertIn("resumed from meta-step 4", again.stdout)

    out = self.create_tempdir().full_path
    proc = run_binary("experiments.evaluate", f"--optimizer={run_dir}/optimizer",
                      "--num_steps=20", "--eval_every=10", "--seeds=0,1", f"--out_dir={out}")
    self.assertEqual(proc.returncode, 0, proc.stderr)
    self.assertIn("learned", proc.stdout)

    # Another configuration in the same run directory: refused, nothing touched.
    before = {f: os.path.getmtime(os.path.join(run_dir, f)) for f in os.listdir(run_dir)}
    proc = run_binary("experiments.meta_train", *TINY_META, "--meta_learning_rate=0.01",
                      f"--run_dir={run_dir}")
    self.assertEqual(proc.returncode, 2)
    self.assertIn("belongs to a different configuration", proc.stderr)
    self.assertLen(proc.stderr.strip().splitlines(), 1, proc.stderr)
    self.assertEqual(before, {f: os.path.getmtime(os.path.join(run_dir, f))
                              for f in os.listdir(run_dir)})

  @pytest.mark.slow  # meta-trains through the binary, twice
  def test_l2o_scale_with_the_enhanced_recipe_trains_resumes_and_exports(self):
    run_dir = os.path.join(self.create_tempdir().full_path, "run")
    # The curriculum's stages and resume are checked in the library
    # (test_known_answers.EnhancedRecipeTest); here the flags reach the trainer.
    args = ["--optimizer=l2o_scale", "--imitation_ratio=0.5", "--random_scaling=1",
            *TINY_META, f"--run_dir={run_dir}"]
    proc = run_binary("experiments.meta_train", *args, "--num_meta_iterations=2")
    self.assertEqual(proc.returncode, 0, proc.stderr)
    proc = run_binary("experiments.meta_train", *args)  # the same run, extended to 4
    self.assertEqual(proc.returncode, 0, proc.stderr)
    self.assertIn("resumed from meta-step 2", proc.stdout)
    with open(os.path.join(run_dir, "run.json")) as f:
      config = json.load(f)["config"]
    self.assertEqual(config["meta_loss"], "log_ratio")  # L2O-Scale's own meta-loss
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f]
    self.assertEqual(config["imitation_ratio"], 0.5)
    self.assertEqual(config["random_scaling"], 1.0)
    self.assertEqual([r["iteration"] for r in records], [2, 4])  # none lost or doubled
    lopt, _ = checkpoints.load_learned(os.path.join(run_dir, "optimizer"))
    self.assertEqual(lopt.name, "l2o_scale")

  @parameterized.named_parameters(
      ("zero_unroll", ["--unroll_length=0"], "unroll_length must be a positive integer"),
      ("not_a_multiple", ["--unroll_length=20", "--num_inner_steps=30"], "must be a multiple"),
      ("negative_meta_batch", ["--meta_batch_size=-2"], "meta_batch_size must be a positive"),
      ("unknown_architecture", ["--optimizer=velo"], "--optimizer=velo"),
      ("bad_meta_loss", ["--meta_loss=sum"], "--meta_loss=sum"),
      ("zero_beta", ["--regularizer=entropy", "--beta=0"], "beta must be a positive number"),
      ("negative_alpha", ["--regularizer=hessian", "--alpha=-1"], "alpha must be a positive"),
      ("zero_chains", ["--regularizer=entropy", "--entropy_chains=0"],
       "entropy_chains must be a positive integer"),
      ("zero_gamma", ["--regularizer=entropy", "--entropy_gamma=0"],
       "entropy_gamma must be a positive number"),
      ("alpha_without_hessian", ["--regularizer=entropy", "--alpha=0.1"],
       "--alpha belongs to --regularizer=hessian, but --regularizer=entropy"),
      ("entropy_flag_without_entropy", ["--entropy_steps=3"],
       "--entropy_steps belongs to --regularizer=entropy, but --regularizer=none"),
      ("when_without_regularizer", ["--regularize_when=first_half"],
       "--regularize_when needs a --regularizer (hessian, entropy"),
      ("unknown_estimator", ["--regularizer=hessian", "--hessian_estimator=frobenius"],
       "--hessian_estimator=frobenius"),
      ("unknown_config_field", ["--config.unroll_lenght=5"],
       "unknown configuration field --config.unroll_lenght; accepted: unroll_length,"),
      ("config_override_checked", ["--config.unroll_length=0"],
       "unroll_length must be a positive integer"),
      ("config_override_owned", ["--config.regularizer.beta=2"],
       "--beta belongs to --regularizer=entropy, but --regularizer=none"),
      ("curriculum_not_increasing", ["--curriculum", "--curriculum_horizons=100,40,200"],
       "curriculum_horizons must be increasing, got [100, 40, 200]"),
      ("curriculum_not_integers", ["--curriculum", "--curriculum_horizons=40,x,200"],
       "--curriculum_horizons takes comma-separated integers, got '40,x,200'"),
      ("curriculum_short_of_the_horizon", ["--curriculum", "--curriculum_horizons=20,40"],
       "must end at num_inner_steps (200)"),
      ("horizons_without_curriculum", ["--curriculum_horizons=20,200"],
       "--curriculum_horizons needs --curriculum"),
      ("imitation_above_one", ["--imitation_ratio=1.5"],
       "imitation_ratio must be a probability in [0, 1], got 1.5"),
      ("imitation_negative", ["--imitation_ratio=-0.1"],
       "imitation_ratio must be a probability in [0, 1], got -0.1"),
      ("negative_scaling", ["--random_scaling=-3"], "random_scaling must be a non-negative"),
      ("more_devices_than_present", ["--num_devices=2"],
       "num_devices=2 but only 1 device is present; accepted: 1 to 1"),
      ("remat_block_not_dividing", ["--remat_block_length=3"],
       "remat_block_length (3) must divide unroll_length (20); e.g. 4"),
      ("both_spellings", ["--regularizer=hessian", "--alpha=0.1",
                          "--config.regularizer.alpha=0.2"], "set the same field"),
  )
  def test_bad_flags(self, args, message):
    run_dir = os.path.join(self.create_tempdir().full_path, "run")
    proc = run_binary("experiments.meta_train", *args, f"--run_dir={run_dir}")
    self.assertEqual(proc.returncode, 2, proc.stderr)
    self.assertLen(proc.stderr.strip().splitlines(), 1, proc.stderr)
    self.assertIn(message, proc.stderr)
    self.assertFalse(os.path.exists(run_dir))


class LoadedOptimizerErrorsTest(parameterized.TestCase):

  def test_corrupted_export(self):
    folder = self.create_tempdir()
    folder.create_file("optimizer.json", content="{not json")
    proc = run_binary("experiments.evaluate", f"--optimizer={folder.full_path}",
                      "--out_dir=" + os.path.join(folder.full_path, "out"))
    self.assertEqual(proc.returncode, 2)
    self.assertIn("optimizer.json is corrupted", proc.stderr)
    self.assertFalse(os.path.exists(os.path.join(folder.full_path, "out")))

  def test_architecture_name_is_not_an_optimizer(self):
    proc = run_binary("experiments.evaluate", "--optimizer=l2o_dm")
    self.assertEqual(proc.returncode, 2)
    self.assertIn("meta-train it with experiments.meta_train", proc.stderr)


class BenchmarkSmokeTest(parameterized.TestCase):
  """Benchmarks print one JSON line; tiny settings keep them from rotting (no timing asserted)."""

  @parameterized.parameters(
      ("benchmarks.inner_step", ["--optimizer=adam,l2o_dm", "--steps=5", "--repeats=1"],
       "ratio_to_adam", 2),
      ("benchmarks.meta_step", ["--steps=1", "--unroll_length=3", "--compile_unrolls=3"],
       "ms_per_meta_step", 1),
      ("benchmarks.memory", ["--unrolls=4", "--meta_batch_size=2", "--time_meta_batch_size=0"],
       "temp_ratio", 1),
      ("benchmarks.estimator_cost", ["--steps=1", "--unroll_length=2", "--es_pairs=1",
                                     "--meta_batch_size=1"], "es_pairs", 1),
      ("benchmarks.population", ["--population=2", "--steps=1", "--unroll_length=2",
                                 "--meta_batch_size=1"], "sequential_over_population", 1),
  )
  @pytest.mark.slow  # each runs a benchmark binary
  def test_prints_json_lines(self, module, args, key, num_lines):
    proc = run_binary(module, *args)
    self.assertEqual(proc.returncode, 0, proc.stderr)
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    self.assertLen(lines, num_lines)
    for line in lines:
      self.assertGreater(line[key], 0.0)
    if module == "benchmarks.inner_step":
      self.assertEqual([(l["optimizer"], l["ratio_to_adam"]) for l in lines][0], ("adam", 1.0))

  def test_benchmark_report_checks_the_targets(self):
    from benchmarks import run_all  # pylint: disable=g-import-not-at-top
    env = {"cpu_count": 2, "machine": "x86_64", "platform": "Linux", "jax": "0.10.2",
           "backend": "cpu", "device": "cpu", "device_count": 1, "allocator": "glibc",
           "python": "3.11"}
    lines = [
        {"benchmark": "meta_step", "optimizer": "l2o_dm", "dataset": "mnist", "unroll_length": 20,
         "ms_per_meta_step": 310.0, "compile_s": {"20": 2.0, "200": 2.2},
         "peer_ms_per_meta_step": 500.0, "ratio_to_peer": 0.62, **env},
        {"benchmark": "memory", "optimizer": "l2o_dm", "meta_batch_size": 64,
         "unroll_length": 200, "remat_block_length": 10, "default": {"temp_gib": 63.2},
         "blocked": {"temp_gib": 11.0}, "temp_ratio": 5.75, **env},
        {"benchmark": "inner_step", "model": "mlp", "optimizer": "l2o_dm", "num_params": 15910,
         "ms_per_step": 5.3, "ratio_to_adam": 21.8, **env},
        {"benchmark": "inner_step", "model": "mlp", "optimizer": "mlp_lopt",
         "num_params": 15910, "ms_per_step": 0.6, "ratio_to_adam": 2.5, **env},
    ]
    text = run_all.render(lines, {"benchmarks.memory": 12.0}, "2026-12-02 03:00 UTC")
    self.assertIn("at most 0.5x the PyTorch eager peer: 0.62x, **not met**", text)
    self.assertIn("compile at unroll 200 is 1.10x unroll 20 (target at most 1.5x): met", text)
    self.assertIn("at least 4.0x at unroll 200: 5.75x, met", text)
    self.assertIn("l2o_dm step at most 8.0x an Adam step on the MLP: 21.8x, **not met**", text)
    self.assertIn("mlp_lopt step at most 3.0x an Adam step on the MLP: 2.5x, met", text)
    self.assertIn("JAX 0.10.2 on cpu", text)


if __name__ == "__main__":
  absltest.main()
