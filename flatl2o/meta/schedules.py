"""Schedules of meta-training (the L2O-enhanced recipe, Chen et al. 2020) as hooks.

- `Curriculum`: episodes grow through `curriculum_horizons`; the horizon
  advances at the first validation that does not beat the current stage's best,
  and training then restarts from the best meta-parameters and meta-optimizer
  state found so far. Without a curriculum there is one stage at
  `num_inner_steps`.
- `Imitation`: with probability `imitation_ratio` a meta-step fits the learned
  optimizer's updates to Adam's along an Adam trajectory instead of unrolling it.

The trainer asks them at fixed points of each meta-step (`horizon`,
`after_validation`, `wants`); a new schedule is a new class with those hooks.
Their checkpointed state is the `stage` dict (index, the stage's best score).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Curriculum:
  """Episode lengths by stage; one stage (`horizons == (num_inner_steps,)`) when off."""

  horizons: tuple[int, ...]
  enabled: bool

  @classmethod
  def of(cls, config) -> "Curriculum":
    """The curriculum of a configuration.

    Args:
      config: a `MetaTrainConfig` (its `horizons` and `curriculum`).

    Returns:
      The `Curriculum`.
    """
    return cls(tuple(config.horizons), bool(config.curriculum))

  @staticmethod
  def initial() -> dict[str, Any]:
    """The state of the first stage.

    Returns:
      The `stage` dict: `{'index': 0, 'best_score': -inf}`.
    """
    return {"index": 0, "best_score": -np.inf}

  def horizon(self, stage: dict[str, Any]) -> int:
    """The episode length of a stage.

    Args:
      stage: the `stage` dict (its `index`).

    Returns:
      The stage's horizon, in inner steps.
    """
    return self.horizons[stage["index"]]

  def after_validation(self, stage: dict[str, Any], score: float, is_collapsed: bool
                       ) -> tuple[dict[str, Any], bool]:
    """The stage after a validation, and whether training restarts from the best.

    Args:
      stage: the current `stage` dict.
      score: the validation's score (higher is better).
      is_collapsed: whether the validation collapsed (it then never beats the best).

    Returns:
      `(stage, restart)`: the stage with an improved `best_score`, or the next stage
      (and `restart` True) at the first validation that does not improve; the stage
      unchanged when the curriculum is off or at its last stage.
    """
    if not self.enabled:
      return stage, False
    if not is_collapsed and score > stage["best_score"]:
      return {**stage, "best_score": score}, False
    if stage["index"] + 1 < len(self.horizons):
      return {"index": stage["index"] + 1, "best_score": -np.inf}, True
    return stage, False


@dataclasses.dataclass(frozen=True)
class Imitation:
  """Which meta-steps are imitation steps: a draw from the meta-step's own key."""

  ratio: float

  def wants(self, iteration_key: jax.Array) -> bool:
    """Whether a meta-step is an imitation step.

    Args:
      iteration_key: the meta-step's key; a uniform draw from a key folded from it
        is compared with `ratio`.

    Returns:
      True with probability `ratio` (never when `ratio` is 0).
    """
    return self.ratio > 0 and float(jax.random.uniform(
        jax.random.fold_in(iteration_key, 0x1317))) < self.ratio
