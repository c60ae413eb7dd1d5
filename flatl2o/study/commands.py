"""One study cell as a meta-training configuration and as the command that reruns it alone.

`meta_config` is the `MetaTrainConfig` of a model x regularizer x seed cell;
`meta_train_command` spells it as an `experiments.meta_train` command line
(`flatl2o.config_fields.command_args`), the same configuration, task and data,
so the same meta-parameters on the same machine and versions.
"""

from __future__ import annotations

import shlex

from flatl2o import config_fields, meta, optimizers
from flatl2o.study.config import SEEN, Preset, StudyConfig


def architecture(model: str):
  """The learned architecture of a study model (the enhanced recipe is L2O-DM's).

  Args:
    model: a study model name (`config.MODELS`); "l2o_dm_enhanced" maps to "l2o_dm".

  Returns:
    The learned optimizer from `optimizers.learned`.
  """
  return optimizers.learned("l2o_dm" if model == "l2o_dm_enhanced" else model)


def regularizer_label(kind: str, coefficient: float | None) -> str:
  """The label of a regularizer in cell and contender names.

  Args:
    kind: the flatness term, or "none" for the plain optimizer.
    coefficient: the term's coefficient; unused when `kind` is "none".

  Returns:
    "none", or "<kind>-<coefficient>" with the coefficient formatted by `:g`.
  """
  return "none" if kind == "none" else f"{kind}-{coefficient:g}"


def meta_config(model: str, kind: str, coefficient: float | None, seed: int, s: Preset,
                num_meta_iterations: int | None = None) -> meta.MetaTrainConfig:
  """The meta-training configuration of one cell under the preset's budgets.

  Args:
    model: the study model (`config.MODELS`); "l2o_dm_enhanced" adds imitation of Adam
      (ratio 0.2) and, where the horizons differ, a horizon curriculum.
    kind: the regularizer's term, or "none".
    coefficient: the term's coefficient (None with "none").
    seed: the meta-training seed.
    s: the preset whose budgets and meta-training settings are used.
    num_meta_iterations: overrides the preset's number of meta-steps when given (not 0).

  Returns:
    The `meta.MetaTrainConfig` of the cell (one device, validated at the meta-training
    horizon every `validation_every` meta-steps, with the architecture's meta-loss).
  """
  reg = meta.RegularizerConfig.with_coefficient(kind, coefficient)
  extra = {}
  if model == "l2o_dm_enhanced":  # Chen et al. 2020: horizon curriculum + imitation of Adam
    u, h = s.unroll_length, s.num_inner_steps
    horizons = sorted({max(u, (h // 4) // u * u), max(u, (h // 2) // u * u), h})
    extra = {"imitation_ratio": 0.2}
    if len(horizons) > 1:
      extra.update(curriculum=True, curriculum_horizons=tuple(horizons))
  lopt = architecture(model)
  settings = s.meta_train_settings()
  if num_meta_iterations:
    settings["num_meta_iterations"] = num_meta_iterations
  return meta.MetaTrainConfig(
      **settings, validation_horizon=s.num_inner_steps, checkpoint_every=s.validation_every,
      log_every=min(10, s.validation_every), seed=seed, regularizer=reg, num_devices=1,
      meta_loss=lopt.preferred_meta_loss, **extra)


def meta_train_command(config: StudyConfig, model: str, kind: str, coefficient: float | None,
                       seed: int) -> str:
  """The `experiments.meta_train` command that meta-trains this study cell on its own.

  Same configuration, task and data, so the same meta-parameters (on the same
  machine and versions) as the cell's export.

  Args:
    config: the study's configuration (its preset, dataset and data folder).
    model: the study model.
    kind: the regularizer's term, or "none"; a term of the user's own adds an `--import`
      of the module that registers it.
    coefficient: the term's coefficient (None with "none").
    seed: the meta-training seed.

  Returns:
    The shell command line, its arguments quoted.
  """
  mconfig = meta_config(model, kind, coefficient, seed, config.settings)
  args = [f"--optimizer={architecture(model).name}", f"--task={SEEN}",
          f"--dataset={config.dataset}"]
  if kind not in ("none",) + meta.terms.BUILTIN:  # a user's term: the module that registers it
    args.insert(0, f"--import={meta.terms.get(kind).__module__}")
  if config.data_dir:
    args.append(f"--data_dir={config.data_dir}")
  args += config_fields.command_args(mconfig, renames=config_fields.META_TRAIN_RENAMES)
  return "python -m experiments.meta_train " + shlex.join(args)


def study_command(config: StudyConfig) -> str:
  """The `experiments.reproduce` command of a whole study (flags that differ from defaults).

  Args:
    config: the study's configuration.

  Returns:
    The command line: the preset, dataset, other dataset, data folder and sweep file when
    set, and the models, regularizers, optimizees, meta seeds and horizons where they
    differ from the preset's.
  """
  defaults = StudyConfig(preset=config.preset, other_dataset=config.other_dataset,
                         sweep_file=config.sweep_file)
  given = [("preset", config.preset), ("dataset", config.dataset),
           ("other_dataset", config.other_dataset), ("data_dir", config.data_dir),
           ("sweep_file", config.sweep_file)]
  given += [(k, ",".join(map(str, getattr(config, k))))
            for k in ("models", "regularizers", "optimizees", "meta_seeds", "horizons")
            if getattr(config, k) is not None and getattr(config, k) != getattr(defaults, k)]
  return "python -m experiments.reproduce " + " ".join(f"--{k}={v}" for k, v in given if v)
