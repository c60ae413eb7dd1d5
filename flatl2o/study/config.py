"""What a study computes: the contenders, the optimizees, `Preset` budgets, `StudyConfig`.

`StudyConfig` (alias `ProtocolConfig`) is pinned in `run_dir/protocol.json` by
its `identity()`; `upgrade_identity` reads an older one as this version writes
it, and `config_from_identity` turns a results file's "config" back into a
`StudyConfig`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

MODELS = ("l2o_dm", "rnnprop", "l2o_scale", "mlp_lopt", "l2o_dm_enhanced")
REGULARIZERS = ("none", "hessian", "entropy")
BASELINES = ("adam", "sgd", "sam", "entropy_sgd")
SEEN = "mlp_sigmoid"
UNSEEN = ("mlp_relu", "mlp_deep", "conv")
OTHER_DATA = "mlp_sigmoid@other"  # the seen model on the other dataset

# Seed ranges kept apart: tuning (validation) never meets test.
TUNING_SEED_BASE = 2000
TEST_SEED_BASE = 1000


def _meta_train_field():
  """A preset field that is the `MetaTrainConfig` field of the same name, for every cell."""
  return dataclasses.field(metadata={"meta_train": True})


@dataclasses.dataclass(frozen=True)
class Preset:
  """Budgets of one reproduction.

  Attributes:
    meta_seeds: meta-training seeds of every model x regularizer.
    num_meta_iterations, unroll_length, num_inner_steps, meta_batch_size,
      validation_every, validation_seeds: `MetaTrainConfig` fields (the
      meta-training horizon is `num_inner_steps`; validation at that horizon).
    alphas, betas: the coefficient sweep of the Hessian and entropy terms.
    adam_grid, sgd_grid: learning rates the baselines are tuned over.
    tuning_seeds: optimizee seeds of the baselines' tuning runs.
    test_seeds: held-out optimizee seeds of every meta-test.
    test_horizon: meta-test training steps (a multiple of `eval_every`).
    eval_every: steps between evaluations of the meta-test runs.
    flatness_batch, trace_probes, lanczos_iters: how flatness is measured
      (training examples, Hutchinson probes, Lanczos steps).
  """

  meta_seeds: tuple[int, ...]
  num_meta_iterations: int = _meta_train_field()
  unroll_length: int = _meta_train_field()
  num_inner_steps: int = _meta_train_field()
  meta_batch_size: int = _meta_train_field()
  validation_every: int = _meta_train_field()
  validation_seeds: int = _meta_train_field()
  alphas: tuple[float, ...]
  betas: tuple[float, ...]
  adam_grid: tuple[float, ...]
  sgd_grid: tuple[float, ...]
  tuning_seeds: int
  test_seeds: int
  test_horizon: int
  eval_every: int
  flatness_batch: int
  trace_probes: int
  lanczos_iters: int

  def meta_train_settings(self) -> dict[str, Any]:
    """The `MetaTrainConfig` fields this preset sets (marked in the field metadata)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if f.metadata.get("meta_train")}


PRESETS = {
    # Every cell at tiny budgets (the tests run it): numbers mean nothing.
    "smoke": Preset(meta_seeds=(0, 1), num_meta_iterations=4, unroll_length=5,
                    num_inner_steps=10, meta_batch_size=2, validation_every=2,
                    validation_seeds=1, alphas=(10.0,), betas=(10.0,),
                    adam_grid=(0.01, 0.1), sgd_grid=(0.1, 1.0), tuning_seeds=1, test_seeds=2,
                    test_horizon=20, eval_every=10, flatness_batch=64, trace_probes=2,
                    lanczos_iters=3),
    # Meant for about an hour on 2 CPU cores; with conv it takes longer (docs/results.md
    # has the measured time and where it goes).
    "cpu": Preset(meta_seeds=(0, 1), num_meta_iterations=120, unroll_length=20,
                  num_inner_steps=100, meta_batch_size=4, validation_every=20,
                  validation_seeds=2, alphas=(1.0, 30.0, 1000.0, 30000.0),
                  betas=(0.3, 3.0, 30.0), adam_grid=(0.003, 0.01, 0.03, 0.1),
                  sgd_grid=(0.1, 0.3, 1.0, 3.0), tuning_seeds=2, test_seeds=3,
                  test_horizon=300, eval_every=50, flatness_batch=512, trace_probes=8,
                  lanczos_iters=10),
    # Meant for one H200 (not yet run on one: no device lent; its time is not measured).
    "gpu": Preset(meta_seeds=(0, 1, 2, 3, 4), num_meta_iterations=1000, unroll_length=20,
                  num_inner_steps=200, meta_batch_size=64, validation_every=50,
                  validation_seeds=8, alphas=(1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0),
                  betas=(0.1, 1.0, 10.0, 100.0, 1000.0), adam_grid=(0.001, 0.003, 0.01, 0.03, 0.1),
                  sgd_grid=(0.03, 0.1, 0.3, 1.0, 3.0), tuning_seeds=4, test_seeds=10,
                  test_horizon=1000, eval_every=100, flatness_batch=2048, trace_probes=32,
                  lanczos_iters=20),
}


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """What one reproduction computes (pinned in `run_dir/protocol.json`)."""

  preset: str = "cpu"
  dataset: str = "digits"
  other_dataset: str | None = None
  data_dir: str | None = None
  models: tuple[str, ...] = MODELS
  regularizers: tuple[str, ...] = REGULARIZERS
  # None: every optimizee there is data for (mlp_sigmoid@other only with other_dataset).
  optimizees: tuple[str, ...] | None = None

  def __post_init__(self):
    if self.preset not in PRESETS:
      raise ValueError(f"unknown preset {self.preset!r}; accepted: {', '.join(PRESETS)}")
    if self.optimizees is None:
      object.__setattr__(self, "optimizees", (SEEN,) + UNSEEN + (
          (OTHER_DATA,) if self.other_dataset is not None else ()))
    elif OTHER_DATA in self.optimizees and self.other_dataset is None:
      raise ValueError(f"optimizee {OTHER_DATA} is the seen MLP on a second dataset: give "
                       "other_dataset (--other_dataset=idx:PATH, digits or a TFDS name) or "
                       "leave it out of the optimizees")
    object.__setattr__(self, "models", tuple(self.models))
    object.__setattr__(self, "regularizers", tuple(self.regularizers))
    object.__setattr__(self, "optimizees", tuple(self.optimizees))
    for what, given, accepted in (("model", self.models, MODELS),
                                  ("regularizer", self.regularizers, REGULARIZERS),
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

  @property
  def settings(self) -> Preset:
    return PRESETS[self.preset]

  def identity(self) -> dict[str, Any]:
    return {"protocol": 1, **dataclasses.asdict(self), "settings": dataclasses.asdict(self.settings)}


ProtocolConfig = StudyConfig  # the name before the study moved into the library


def upgrade_identity(identity: dict) -> dict:
  """An identity as this version writes it: before 2026-12-03 the optimizees listed
  mlp_sigmoid@other even without an other_dataset (it was skipped)."""
  optimizees = identity.get("optimizees")
  if identity.get("other_dataset") is None and isinstance(optimizees, list):
    identity = {**identity, "optimizees": [o for o in optimizees if o != OTHER_DATA]}
  return identity


def config_from_identity(identity: dict) -> StudyConfig:
  """The `StudyConfig` of a protocol.json / results.json "config" (older ones upgraded)."""
  identity = upgrade_identity(identity)
  names = {f.name for f in dataclasses.fields(StudyConfig)}
  return StudyConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                        for k, v in identity.items() if k in names})


class StudyInterrupted(Exception):
  """`should_stop` returned True; every finished cell is kept."""


ProtocolInterrupted = StudyInterrupted
