"""Flags derived from MetaTrainConfig: every field, its help, both spellings, one answer."""

import dataclasses
import os
from unittest import mock

from absl import flags
from absl.testing import absltest, parameterized

from experiments import _config_flags
from flatl2o import meta

RENAMES = _config_flags.META_TRAIN_RENAMES


def _parse(*args):
  argv = ["prog", *args]
  values = flags.FlagValues()
  made = _config_flags.define(meta.MetaTrainConfig, renames=RENAMES, flag_values=values,
                              argv=argv)
  values(argv)
  return made, values, _config_flags.build(made, values)


def _leaf_paths(cls, prefix=""):
  for f in dataclasses.fields(cls):
    if dataclasses.is_dataclass(f.default):
      yield from _leaf_paths(type(f.default), f"{prefix}{f.name}.")
    elif f.metadata.get("flag") is not False:  # a user's term's fields: --config.regularizer.F
      yield prefix + f.name


class ConfigFlagsTest(parameterized.TestCase):

  def test_every_field_is_a_flag_with_its_docstring_help_and_default(self):
    made, values, (config, given) = _parse()
    self.assertEqual(set(made.flag_names), set(_leaf_paths(meta.MetaTrainConfig)))
    self.assertEqual(config, meta.MetaTrainConfig())
    self.assertEmpty(given)
    self.assertTrue(values["unroll_length"].help.startswith(
        "inner steps per truncation (one meta-gradient)."))
    self.assertIn("Each episode starts from fresh optimizee", values["num_inner_steps"].help)
    self.assertIn("'none', 'hessian', 'entropy', or the name of a registered term", values["regularizer"].help)
    self.assertEqual(values["regularize_when"].default, "always")
    for cls in (meta.MetaTrainConfig, meta.RegularizerConfig):
      docs = _config_flags.field_docs(cls)
      self.assertEqual(set(docs), {f.name for f in dataclasses.fields(cls)}, cls.__name__)

  @parameterized.named_parameters(
      ("plain_flags", ["--unroll_length=10", "--num_inner_steps=40", "--regularizer=hessian",
                       "--alpha=0.01", "--regularize_when=second_half", "--second_order"]),
      ("config_overrides", ["--config.unroll_length=10", "--config.num_inner_steps=40",
                            "--config.regularizer.kind=hessian",
                            "--config.regularizer.alpha=0.01",
                            "--config.regularizer.when=second_half", "--config.second_order"]),
      ("mixed", ["--config.unroll_length=10", "--num_inner_steps=40", "--regularizer=hessian",
                 "--config.regularizer.alpha=0.01", "--regularize_when=second_half",
                 "--second_order"]),
  )
  def test_both_spellings_give_the_same_config(self, args):
    _, _, (config, given) = _parse(*args)
    expected = meta.MetaTrainConfig(
        unroll_length=10, num_inner_steps=40, second_order=True,
        regularizer=meta.RegularizerConfig(kind="hessian", alpha=0.01, when="second_half"))
    self.assertEqual(config, expected)
    self.assertEqual(given, {"unroll_length", "num_inner_steps", "second_order",
                             "regularizer.kind", "regularizer.alpha", "regularizer.when"})

  @parameterized.named_parameters(
      ("defaults", meta.MetaTrainConfig(), []),
      ("mixed", meta.MetaTrainConfig(
          unroll_length=10, num_inner_steps=40, seed=3, second_order=True, num_devices=1,
          curriculum=True, curriculum_horizons=(10, 20, 40), imitation_ratio=0.2,
          regularizer=meta.RegularizerConfig(kind="entropy", beta=3.0, entropy_noise=1e-05,
                                             when="first_half")),
       ["--unroll_length=10", "--num_inner_steps=40", "--curriculum_horizons=10,20,40",
        "--regularizer=entropy", "--beta=3.0", "--regularize_when=first_half"]),
      # alpha = 1.0 is the trace estimator's resolved default, not the eigenvalue's
      ("resolved_default", meta.MetaTrainConfig(regularizer=meta.RegularizerConfig(
          kind="hessian", hessian_estimator="eigenvalue", alpha=1.0)), ["--alpha=1.0"]),
      # the horizons that follow num_inner_steps are not listed (and parse back)
      ("curriculum_default", meta.MetaTrainConfig(
          unroll_length=5, num_inner_steps=20, curriculum=True),
       ["--unroll_length=5", "--num_inner_steps=20", "--curriculum"]),
  )
  def test_command_args_parse_back_to_the_config(self, config, some_args):
    args = _config_flags.command_args(config, renames=RENAMES)
    for arg in some_args:
      self.assertIn(arg, args)
    _, _, (parsed, given) = _parse(*args)
    self.assertEqual(parsed, config)
    self.assertLen(given, len(args))  # only the fields that differ from the defaults
    self.assertEmpty([a for a in args if a.startswith("--curriculum_horizons")
                      and not config.curriculum])

  def test_the_same_field_twice_is_refused(self):
    with self.assertRaisesRegex(ValueError, "--alpha and --config.regularizer.alpha set the "
                                "same field"):
      _parse("--alpha=0.1", "--config.regularizer.alpha=0.2")

  def test_values_are_checked_by_the_dataclass(self):
    with self.assertRaisesRegex(ValueError, "unroll_length must be a positive integer"):
      _parse("--config.unroll_length=0")


class DeterministicFlagTest(absltest.TestCase):

  def test_adds_the_xla_flag_once_and_keeps_others(self):
    from experiments import _cli  # pylint: disable=g-import-not-at-top
    with mock.patch.dict(os.environ, {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}):
      _cli.use_deterministic_kernels()
      _cli.use_deterministic_kernels()
      self.assertEqual(os.environ["XLA_FLAGS"],
                       "--xla_dump_to=/tmp/x --xla_gpu_deterministic_ops=true")


if __name__ == "__main__":
  absltest.main()
