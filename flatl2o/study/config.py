"""What a study computes: the contenders, the optimizees, `Preset` budgets, `StudyConfig`.

`StudyConfig` (alias `ProtocolConfig`) is pinned in `run_dir/protocol.json` by
its `identity()`; `upgrade_identity` reads an older one as this version writes
it, and `config_from_identity` turns a results file's "config" back into a
`StudyConfig`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flatl2o.meta import terms as meta_terms

MODELS = ("l2o_dm", "rnnprop", "l2o_scale", "mlp_lopt", "l2o_dm_enhanced")
REGULARIZERS = ("none", "hessian", "entropy")
BASELINES = ("adam", "sgd", "sam", "entropy_sgd")
SEEN = "mlp_sigmoid"
UNSEEN = ("mlp_relu", "mlp_deep", "conv")
OTHER_DATA = "mlp_sigmoid@other"  # the seen model on the other dataset

# Seed ranges kept apart: tuning (validation) never meets test.
TUNING_SEED_BASE = 2000
TEST_SEED_BASE = 1000


_NO_DEFAULT = object()


def _meta_train_field(default=_NO_DEFAULT):
  """A preset field that is the `MetaTrainConfig` field of the same name, for every cell."""
  if default is _NO_DEFAULT:
    return dataclasses.field(metadata={"meta_train": True})
  return dataclasses.field(default=default, metadata={"meta_train": True})


# Where coefficients come from: swept in the run itself, or the shipped sweep
# (flatl2o/study/sweep.json, made by --preset=sweep).
COEFFICIENT_SOURCES = ("sweep", "shipped")


@dataclasses.dataclass(frozen=True)
class Preset:
  """Budgets of one reproduction.

  Attributes:
    meta_seeds: meta-training seeds of every model x regularizer.
    num_meta_iterations, unroll_length, num_inner_steps, meta_batch_size,
      validation_every, validation_seeds, patience, min_meta_iterations,
      meta_learning_rate:
      `MetaTrainConfig` fields (the meta-training horizon is `num_inner_steps`;
      validation at that horizon; with `patience` a run stops once validation
      has not improved for that many meta-steps, `num_meta_iterations` the cap).
    adam_grid, sgd_grid: learning rates the baselines are tuned over.
    tuning_seeds: optimizee seeds of the baselines' tuning runs.
    test_seeds: held-out optimizee seeds of every meta-test.
    test_horizon: meta-test training steps (a multiple of `eval_every`).
    eval_every: steps between evaluations of the meta-test runs.
    flatness_batch, trace_probes, lanczos_iters: how flatness is measured
      (training examples, Hutchinson probes, Lanczos steps); the local-entropy
      gap uses `entropy_gap_gamma` and `entropy_gap_samples`.
    coefficients: "sweep" (each term's coefficient swept in the run itself) or
      "shipped" (taken from the shipped sweep, `flatl2o/study/sweep.json`).
    sweep_seeds: meta-training seeds of every sweep point (validation averaged
      over them chooses the coefficient).
    sweep_range: (smallest, largest) coefficient of the sweep by decades: it
      starts at 1 and goes up by factors of 10 until a point collapses or the
      largest is passed; when 1 already collapses it goes down instead.
    sweep_only: the run is the sweep and nothing else (`--preset=sweep`).
    models, optimizees, baselines: what the study compares by default
      (optimizees None: every one there is data for).
    horizons: the meta-test horizons (training steps) the comparisons are made at, read
      from each run's evaluations (one run of `test_horizon` steps, not one per horizon):
      the first is the primary family's; each a multiple of `eval_every`, at most
      `test_horizon`; empty: `test_horizon` alone.
    shipped_sweep: the file in `flatl2o/study/` a preset with shipped coefficients takes
      them from (it must cover every model of the study).
  """

  meta_seeds: tuple[int, ...]
  num_meta_iterations: int = _meta_train_field()
  unroll_length: int = _meta_train_field()
  num_inner_steps: int = _meta_train_field()
  meta_batch_size: int = _meta_train_field()
  validation_every: int = _meta_train_field()
  validation_seeds: int = _meta_train_field()
  adam_grid: tuple[float, ...]
  sgd_grid: tuple[float, ...]
  tuning_seeds: int
  test_seeds: int
  test_horizon: int
  eval_every: int
  flatness_batch: int
  trace_probes: int
  lanczos_iters: int
  patience: int | None = _meta_train_field(None)
  min_meta_iterations: int = _meta_train_field(0)
  meta_learning_rate: float = _meta_train_field(1e-3)
  entropy_gap_gamma: float = 100.0
  entropy_gap_samples: int = 32
  coefficients: str = "sweep"
  sweep_seeds: tuple[int, ...] = (100, 101)
  sweep_range: tuple[float, float] = (1e-3, 1e5)
  sweep_only: bool = False
  models: tuple[str, ...] = MODELS
  optimizees: tuple[str, ...] | None = None
  baselines: tuple[str, ...] = BASELINES
  horizons: tuple[int, ...] = ()
  shipped_sweep: str = "sweep.json"

  @property
  def comparison_horizons(self) -> tuple[int, ...]:
    """The horizons compared at: `horizons`, or `(test_horizon,)` when it is empty."""
    return tuple(self.horizons) or (self.test_horizon,)

  def meta_train_settings(self) -> dict[str, Any]:
    """The `MetaTrainConfig` fields this preset sets (marked in the field metadata).

    Returns:
      Field name -> this preset's value, for every field marked `meta_train`.
    """
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if f.metadata.get("meta_train")}


# The default study: the primary question (docs/results.md, "Design") on 2 CPU cores.
_PRIMARY = Preset(
    meta_seeds=(0, 1, 2, 3, 4), num_meta_iterations=700, min_meta_iterations=600,
    patience=100, unroll_length=20, num_inner_steps=200, meta_batch_size=4,
    validation_every=50, validation_seeds=4, adam_grid=(0.003, 0.01, 0.03, 0.1),
    sgd_grid=(0.1, 0.3, 1.0, 3.0), tuning_seeds=2, test_seeds=5, test_horizon=400,
    eval_every=50, flatness_batch=512, trace_probes=8, lanczos_iters=10,
    coefficients="shipped", models=("l2o_dm",), optimizees=(SEEN, "mlp_relu", "mlp_deep"),
    baselines=("adam",))

PRESETS = {
    # The primary question with >= 5 meta-seeds, coefficients from the shipped sweep.
    "primary": _PRIMARY,
    # The coefficient sweep the primary study takes its coefficients from: L2O-DM on
    # the seen MLP with the primary's unroll, episodes and meta-batch, 300 meta-steps
    # per point (no early stop), two seeds per point.
    "sweep": dataclasses.replace(_PRIMARY, num_meta_iterations=300, min_meta_iterations=0,
                                 patience=None, coefficients="sweep", sweep_only=True),
    # Every code path once at tiny budgets (the tests run it): numbers mean nothing. Every
    # model (each swept over one decade) and every optimizee, two horizons; 40 inner steps and
    # a meta learning rate of 3e-3 so that 6 meta-steps validate without collapsing (each
    # model lowers the validation loss by 11-65% there), so the same-budget control is paired.
    "smoke": Preset(meta_seeds=(0, 1), num_meta_iterations=6, unroll_length=10,
                    num_inner_steps=40, meta_batch_size=2, validation_every=2,
                    validation_seeds=1, meta_learning_rate=3e-3, adam_grid=(0.01, 0.1),
                    sgd_grid=(0.1, 1.0), tuning_seeds=1, test_seeds=2, test_horizon=40,
                    eval_every=20, horizons=(40, 20), flatness_batch=64, trace_probes=2,
                    lanczos_iters=3, entropy_gap_samples=4, sweep_seeds=(100,),
                    sweep_range=(1.0, 1.0), optimizees=(SEEN,) + UNSEEN + (OTHER_DATA,)),
    # The broad protocol (every model and optimizee) for hours on 2 CPU cores, resumable.
    "cpu": Preset(meta_seeds=(0, 1, 2, 3, 4), num_meta_iterations=300, unroll_length=20,
                  num_inner_steps=100, meta_batch_size=4, validation_every=50,
                  validation_seeds=2, adam_grid=(0.003, 0.01, 0.03, 0.1),
                  sgd_grid=(0.1, 0.3, 1.0, 3.0), tuning_seeds=2, test_seeds=5,
                  test_horizon=300, eval_every=50, flatness_batch=512, trace_probes=8,
                  lanczos_iters=10),
    # The paper's claim across its models (issue 27): the primary design asked of each
    # model, on the seen MLP and every unseen optimizee, meta-tested at the training horizon
    # (200 steps, the primary family's) and at 5x it (1000), from one run of 1000 steps.
    # Coefficients per model from flatl2o/study/sweep_models.json (--preset=sweep
    # --models=...); hours on 2 CPU cores, resumable.
    "models": dataclasses.replace(
        _PRIMARY, models=("l2o_dm", "rnnprop", "l2o_scale", "l2o_dm_enhanced", "mlp_lopt"),
        optimizees=(SEEN,) + UNSEEN, test_horizon=1000, horizons=(200, 1000),
        shipped_sweep="sweep_models.json"),
    # Meant for one H200 (not yet run on one: no device lent; its time is not measured).
    "gpu": Preset(meta_seeds=tuple(range(8)), num_meta_iterations=2000,
                  min_meta_iterations=1000, patience=300, unroll_length=20,
                  num_inner_steps=200, meta_batch_size=64, validation_every=50,
                  validation_seeds=8, adam_grid=(0.001, 0.003, 0.01, 0.03, 0.1),
                  sgd_grid=(0.03, 0.1, 0.3, 1.0, 3.0), tuning_seeds=4, test_seeds=10,
                  test_horizon=1000, eval_every=100, flatness_batch=2048, trace_probes=32,
                  lanczos_iters=20, sweep_seeds=(100, 101, 102)),
}


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """What one reproduction computes (pinned in `run_dir/protocol.json`).

  `models`, `optimizees`, `meta_seeds` and `horizons` left None take the preset's; given
  horizons, the meta-tests run to the largest.
  """

  preset: str = "primary"
  dataset: str = "digits"
  other_dataset: str | None = None
  data_dir: str | None = None
  models: tuple[str, ...] | None = None
  regularizers: tuple[str, ...] = REGULARIZERS
  # None: the preset's (every one there is data for: mlp_sigmoid@other only with other_dataset).
  optimizees: tuple[str, ...] | None = None
  meta_seeds: tuple[int, ...] | None = None
  # The meta-test horizons compared at (None: the preset's); the runs go to the largest.
  horizons: tuple[int, ...] | None = None
  # Where a preset with shipped coefficients takes them from (None: flatl2o/study/sweep.json).
  sweep_file: str | None = None

  def __post_init__(self):
    if self.preset not in PRESETS:
      raise ValueError(f"unknown preset {self.preset!r}; accepted: {', '.join(PRESETS)}")
    preset = PRESETS[self.preset]
    if self.models is None:
      object.__setattr__(self, "models", preset.models)
    if self.meta_seeds is None:
      object.__setattr__(self, "meta_seeds", preset.meta_seeds)
    if self.optimizees is None:
      default = preset.optimizees or (SEEN,) + UNSEEN + (OTHER_DATA,)
      object.__setattr__(self, "optimizees", tuple(
          o for o in default if o != OTHER_DATA or self.other_dataset is not None))
    elif OTHER_DATA in self.optimizees and self.other_dataset is None:
      raise ValueError(f"optimizee {OTHER_DATA} is the seen MLP on a second dataset: give "
                       "other_dataset (--other_dataset=idx:PATH, digits or a TFDS name) or "
                       "leave it out of the optimizees")
    object.__setattr__(self, "models", tuple(self.models))
    object.__setattr__(self, "regularizers", tuple(self.regularizers))
    object.__setattr__(self, "optimizees", tuple(self.optimizees))
    object.__setattr__(self, "meta_seeds", tuple(self.meta_seeds))
    if self.horizons is not None:
      object.__setattr__(self, "horizons", tuple(self.horizons))
    for what, given, accepted in (("model", self.models, MODELS),
                                  ("regularizer", self.regularizers,
                                   ("none",) + meta_terms.names()),
                                  ("optimizee", self.optimizees, (SEEN,) + UNSEEN + (OTHER_DATA,))):
      unknown = [v for v in given if v not in accepted]
      if unknown or not given or len(set(given)) != len(given):
        raise ValueError(f"unknown or repeated {what}s {unknown or list(given)}; accepted: "
                         f"{', '.join(accepted)}")
    if SEEN not in self.optimizees:
      raise ValueError(f"optimizees must include {SEEN!r}, the optimizee of meta-training")
    if "none" not in self.regularizers:
      raise ValueError("regularizers must include 'none': every effect is measured against "
                       "the plain optimizer")
    seeds = self.meta_seeds
    if (len(seeds) < 2 or len(set(seeds)) != len(seeds)
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in seeds)):
      raise ValueError(f"meta_seeds {list(seeds)}: a comparison needs at least 2 distinct "
                       "non-negative meta-training seeds (e.g. 0,1,2,3,4)")
    if self.sweep_file is not None and self.settings.coefficients != "shipped":
      raise ValueError(f"sweep_file is for presets that take their coefficients from a sweep "
                       f"(primary); --preset={self.preset} sweeps them itself")
    if self.horizons is not None and not self.horizons:
      raise ValueError("horizons: give at least one meta-test horizon, e.g. 200,1000")
    s = self.settings
    horizons = s.comparison_horizons
    if any(isinstance(h, bool) or not isinstance(h, int) or h <= 0 or h % s.eval_every
           or h > s.test_horizon for h in horizons) or len(set(horizons)) != len(horizons):
      raise ValueError(f"horizons {list(horizons)}: each a distinct positive multiple of "
                       f"eval_every ({s.eval_every}) up to test_horizon ({s.test_horizon})")
    self.model_coefficients()  # a missing or bad sweep file fails here, before any work

  @property
  def settings(self) -> Preset:
    preset = dataclasses.replace(PRESETS[self.preset], meta_seeds=self.meta_seeds)
    if self.horizons:
      top = max((h for h in self.horizons if isinstance(h, int)), default=preset.test_horizon)
      preset = dataclasses.replace(preset, horizons=self.horizons, test_horizon=top)
    return preset

  @property
  def sweep_path(self) -> str:
    """The sweep a preset with shipped coefficients reads: `sweep_file`, else the preset's
    `shipped_sweep` in `flatl2o/study/`."""
    import os  # pylint: disable=g-import-not-at-top
    return self.sweep_file or os.path.join(os.path.dirname(__file__), self.settings.shipped_sweep)

  def model_coefficients(self) -> dict[str, dict[str, float]] | None:
    """Each model's coefficients, for a preset with `coefficients="shipped"` (else None).

    The sweep file's for each model of the study (a sweep of several models keeps them
    under `model_coefficients`; an older one is L2O-DM's), and for a term of the user's
    own that it lacks, that term's default.

    Returns:
      Model -> term -> coefficient, for every model of the study.

    Raises:
      ValueError: the sweep file is missing or unreadable, or lacks one of the models.
    """
    if self.settings.coefficients != "shipped":
      return None
    from flatl2o.study import sweep  # pylint: disable=g-import-not-at-top
    shipped = sweep.load(self.sweep_path)
    covered = sweep.model_coefficients(shipped)
    missing = [m for m in self.models if m not in covered]
    if missing:
      raise ValueError(
          f"the sweep {self.sweep_path} has no coefficients for {', '.join(missing)} (it covers "
          f"{', '.join(covered)}): sweep them with `python -m experiments.reproduce "
          f"--preset=sweep --models={','.join(missing)}` and pass its results.json as "
          "--sweep_file, or leave those models out")
    out = {}
    for model in self.models:
      out[model] = {k: float(v) for k, v in covered[model].items()}
      for kind in self.regularizers:
        if kind != "none" and kind not in out[model]:
          out[model][kind] = sweep.shipped_coefficient({"coefficients": out[model]}, kind)
    return out

  def shipped_coefficients(self) -> dict[str, float] | None:
    """The coefficients of the study's first model (`model_coefficients`), None for a preset
    that sweeps its coefficients itself.

    Returns:
      Term -> coefficient for the sweep file's terms and every regularizer of this study
      other than "none", or None when the preset sweeps its coefficients itself.
    """
    every = self.model_coefficients()
    return None if every is None else every[self.models[0]]

  def identity(self) -> dict[str, Any]:
    """What defines the run, as pinned in protocol.json.

    Returns:
      The fields of this configuration except `sweep_file` (the coefficients, not the file's
      path, define the run), with `protocol` (2), `settings` (the preset's fields),
      `coefficients` (`shipped_coefficients()`) and `model_coefficients`.
    """
    # The coefficients, not the file's path, define the run.
    identity = {k: v for k, v in dataclasses.asdict(self).items() if k != "sweep_file"}
    every = self.model_coefficients()
    return {"protocol": 2, **identity, "settings": dataclasses.asdict(self.settings),
            "coefficients": None if every is None else every[self.models[0]],
            "model_coefficients": every}


ProtocolConfig = StudyConfig  # the name before the study moved into the library


def upgrade_identity(identity: dict) -> dict:
  """An identity as this version writes it.

  Before 2026-12-03 the optimizees listed mlp_sigmoid@other even without an other_dataset
  (it was skipped); before 2026-12-08 the settings had no `horizons`, `shipped_sweep` and
  `meta_learning_rate` (their defaults).

  Args:
    identity: a protocol.json / results.json "config", of any version.

  Returns:
    The identity with mlp_sigmoid@other dropped from its optimizees when it has no
    other_dataset; otherwise `identity` itself.
  """
  optimizees = identity.get("optimizees")
  if identity.get("other_dataset") is None and isinstance(optimizees, list):
    identity = {**identity, "optimizees": [o for o in optimizees if o != OTHER_DATA]}
  settings = identity.get("settings")
  if isinstance(settings, dict):  # before 2026-12-08: one horizon, sweep.json for every preset
    identity = {**identity, "settings": {"horizons": [], "shipped_sweep": "sweep.json",
                                         "meta_learning_rate": 1e-3, **settings}}
  return identity


def config_from_identity(identity: dict) -> StudyConfig:
  """The `StudyConfig` of a protocol.json / results.json "config" (older ones upgraded).

  Args:
    identity: the "config"; keys that are not `StudyConfig` fields are ignored and lists
      become tuples.

  Returns:
    The `StudyConfig`.
  """
  identity = upgrade_identity(identity)
  names = {f.name for f in dataclasses.fields(StudyConfig)}
  return StudyConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                        for k, v in identity.items() if k in names})


class StudyInterrupted(Exception):
  """`should_stop` returned True; every finished cell is kept."""


ProtocolInterrupted = StudyInterrupted
