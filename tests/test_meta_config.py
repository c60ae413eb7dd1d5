"""MetaTrainConfig's split: UnrollConfig (what compiled steps read), the flatness term as a
tagged union, and identity / ownership from field metadata (flatl2o.meta.config)."""

import dataclasses
import json
import os

from absl.testing import absltest, parameterized

from flatl2o import checkpoints, meta, optimizers, tasks
from flatl2o.meta import config as config_lib
from flatl2o.meta import run_dir


class UnrollConfigTest(parameterized.TestCase):

  @parameterized.parameters(
      {"seed": 3}, {"num_meta_iterations": 7}, {"validation_every": 3},
      {"validation_horizon": 40}, {"validation_seeds": 2}, {"checkpoint_every": 2},
      {"log_every": 1}, {"max_consecutive_skipped": 3}, {"imitation_ratio": 0.5},
      {"curriculum": True, "curriculum_horizons": (100, 200)})
  def test_host_settings_do_not_reach_the_compiled_steps(self, **kwargs):
    base = meta.MetaTrainConfig()
    self.assertEqual(dataclasses.replace(base, **kwargs).unroll_config(), base.unroll_config())

  @parameterized.parameters(
      {"unroll_length": 10}, {"num_inner_steps": 100}, {"meta_batch_size": 2},
      {"meta_learning_rate": 0.01}, {"meta_grad_clip": 2.0}, {"meta_loss": "log_ratio"},
      {"second_order": True}, {"random_scaling": 0.1}, {"convex_term": 0.1},
      {"remat_block_length": 4}, {"num_devices": 1}, {"estimator": "pes"}, {"es_std": 0.1},
      {"es_pairs": 3}, {"regularizer": meta.RegularizerConfig(kind="hessian")})
  def test_what_the_steps_compute_with_does(self, **kwargs):
    base = meta.MetaTrainConfig()
    self.assertNotEqual(dataclasses.replace(base, **kwargs).unroll_config(),
                        base.unroll_config())

  def test_a_host_field_is_not_readable_in_compiled_code(self):
    unroll = meta.MetaTrainConfig(seed=5).unroll_config()
    for name in ("seed", "num_meta_iterations", "validation_horizon", "imitation_ratio"):
      self.assertFalse(hasattr(unroll, name), name)

  def test_every_unroll_field_is_a_meta_train_field(self):
    fields = {f.name for f in dataclasses.fields(meta.MetaTrainConfig)}
    for f in dataclasses.fields(meta.UnrollConfig):
      self.assertIn(f.name, fields)

  def test_curriculum_stage_changes_only_the_horizon(self):
    unroll = meta.MetaTrainConfig().unroll_config(40)
    self.assertEqual(unroll.num_inner_steps, 40)
    self.assertEqual(dataclasses.replace(unroll, num_inner_steps=200),
                     meta.MetaTrainConfig().unroll_config())


class FlatnessTermTest(parameterized.TestCase):

  def test_the_compiled_steps_see_only_the_terms_own_settings(self):
    config = meta.MetaTrainConfig(regularizer=meta.RegularizerConfig(
        kind="hessian", alpha=3.0, hessian_probes=2, beta=7.0, when="second_half"))
    self.assertEqual(config.unroll_config().regularizer,
                     meta.HessianTerm(alpha=3.0, probes=2, when="second_half"))
    entropy = meta.RegularizerConfig(kind="entropy", beta=0.5, entropy_chains=2, alpha=9.0)
    self.assertEqual(entropy.term(), meta.EntropyTerm(beta=0.5, chains=2))
    self.assertIsNone(meta.RegularizerConfig().term())
    self.assertIsNone(meta.MetaTrainConfig().unroll_config().regularizer)

  @parameterized.parameters(
      meta.HessianTerm(alpha=10.0, estimator="eigenvalue", power_iters=3, when="first_half"),
      meta.EntropyTerm(beta=2.0, gamma=0.5, noise=0.0, add_to_inner_loss=True),
      None)
  def test_meta_train_config_takes_a_term(self, term):
    config = meta.MetaTrainConfig(regularizer=term)
    self.assertIsInstance(config.regularizer, meta.RegularizerConfig)  # flags, run.json
    self.assertEqual(config.unroll_config().regularizer, term)
    self.assertEqual(meta.RegularizerConfig.of(term).term(), term)

  def test_term_equals_its_flat_spelling(self):
    self.assertEqual(
        meta.MetaTrainConfig(regularizer=meta.HessianTerm(alpha=0.5)),
        meta.MetaTrainConfig(regularizer=meta.RegularizerConfig(kind="hessian", alpha=0.5)))

  @parameterized.parameters(
      (lambda: meta.HessianTerm(alpha=0.0), "alpha must be a positive"),
      (lambda: meta.HessianTerm(estimator="exact"), "unknown regularizer estimator 'exact'"),
      (lambda: meta.EntropyTerm(chains=0), "chains must be a positive integer"),
      (lambda: meta.EntropyTerm(noise=-1.0), "noise must be a non-negative number"),
      (lambda: meta.MetaTrainConfig(regularizer="hessian"),
       "regularizer must be a RegularizerConfig, a registered flatness term"))
  def test_bad_terms(self, make, message):
    with self.assertRaisesRegex(ValueError, message):
      make()


class FieldMetadataTest(absltest.TestCase):

  def test_ownership(self):
    owned = config_lib.owned_fields()
    self.assertEqual(owned["hessian"], ("hessian_estimator", "alpha", "hessian_probes",
                                        "power_iters"))
    self.assertEqual(owned["entropy"], ("beta", "entropy_gamma", "entropy_chains",
                                        "entropy_steps", "entropy_step_size", "entropy_noise"))
    self.assertEqual(owned["any"], ("when", "add_to_inner_loss"))
    # Every field but the kind (and a user's term's own fields) belongs somewhere: a new
    # setting must say whose it is.
    every = {f.name for f in dataclasses.fields(meta.RegularizerConfig)} - {"kind", "term_fields"}
    self.assertEqual(every, set(sum(owned.values(), ())))

  def test_identity(self):
    self.assertEqual(set(run_dir.NOT_IDENTITY),
                     {"num_meta_iterations", "checkpoint_every", "log_every",
                      "max_consecutive_skipped", "remat_block_length", "patience",
                      "min_meta_iterations"})
    self.assertEqual(set(config_lib.identity_fields()) | set(run_dir.NOT_IDENTITY),
                     {f.name for f in dataclasses.fields(meta.MetaTrainConfig)})


if __name__ == "__main__":
  absltest.main()


class CurriculumDefaultTest(parameterized.TestCase):

  @parameterized.parameters(
      (200, 20, (40, 100, 200)), (20, 5, (10, 20)), (20, 4, (4, 8, 20)), (90, 30, (30, 90)),
      (5, 5, (5,)))
  def test_default_horizons_follow_num_inner_steps(self, num_inner_steps, unroll_length,
                                                   expected):
    config = meta.MetaTrainConfig(num_inner_steps=num_inner_steps, unroll_length=unroll_length,
                                  curriculum=True)
    self.assertEqual(config.curriculum_horizons, expected)

  def test_explicit_horizons_are_kept_and_checked(self):
    config = meta.MetaTrainConfig(num_inner_steps=20, unroll_length=5, curriculum=True,
                                  curriculum_horizons=(5, 20))
    self.assertEqual(config.curriculum_horizons, (5, 20))
    with self.assertRaisesRegex(ValueError, r"curriculum_horizons \[40, 100, 200\] must end at "
                                r"num_inner_steps \(20\)"):
      meta.MetaTrainConfig(num_inner_steps=20, unroll_length=5, curriculum=True,
                           curriculum_horizons=(40, 100, 200))

  @parameterized.parameters(
      ({}, None), ({"num_inner_steps": 20, "unroll_length": 5}, None),
      ({"curriculum": True}, None),
      # a curriculum over the former default at another num_inner_steps never existed
      ({"curriculum": True, "num_inner_steps": 100}, "curriculum_horizons"))
  def test_an_older_run_json_with_the_former_default_still_resumes(self, kwargs, refused):
    """run.json of a version whose default horizons were (40, 100, 200) for every run."""
    new = meta.MetaTrainConfig(**kwargs)
    old = run_dir.describe(optimizers.L2ODM(), tasks.get("quadratic", batch_size=8), new)
    old["config"]["curriculum_horizons"] = [40, 100, 200]
    path = self.create_tempdir().full_path
    with open(os.path.join(path, "run.json"), "w") as f:
      json.dump(old, f)
    claim = lambda: run_dir.claim(path, run_dir.describe(
        optimizers.L2ODM(), tasks.get("quadratic", batch_size=8), new))
    if refused is None:
      claim()
    else:
      with self.assertRaisesRegex(checkpoints.CheckpointError, refused):
        claim()
