"""Model selection during meta-training: the best validated meta-parameters, never collapsed.

Every `validation_every` meta-steps the learned optimizer trains fresh optimizees
for `validation_horizon` steps and is scored on the validation split (accuracy,
or minus the loss for tasks without accuracy). `Selector` keeps the
best-scoring meta-parameters, skipping any that collapsed: an optimizer whose
validation runs end above `COLLAPSE_RATIO` of their starting training loss has
stopped optimizing (a too-large flatness coefficient can teach it to stand
still, which is "flat" and useless). A new selection rule is a new `Selector`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

COLLAPSE_RATIO = 0.9


def collapsed(metrics: dict[str, float]) -> bool:
  """True when the validation runs no longer lower the training loss (or blew up)."""
  final, initial = metrics["final_train_loss"], metrics["initial_train_loss"]
  return not np.isfinite(final) or final > COLLAPSE_RATIO * initial


def score_of(metrics: dict[str, float]) -> float:
  """Higher is better: validation accuracy, or minus the validation loss."""
  if "accuracy" in metrics:
    value = metrics["accuracy"]
  else:
    value = -metrics["loss"]
  return float(value) if np.isfinite(value) else -np.inf


def _copy(tree):
  # The meta-step donates the meta-optimizer state: a kept copy needs its own buffers.
  return jax.tree.map(jnp.copy, tree)


@dataclasses.dataclass
class Selector:
  """Best by validation score among the validations that did not collapse.

  Its checkpointed part is the `best` dict (`meta_params`, `score`, `iteration`,
  and `meta_opt_state` with `keep_opt_state`, which a curriculum restarts
  from); the last collapsed meta-parameters are kept on the host only (what a
  run in which everything collapsed returns).

  Attributes:
    keep_opt_state: also keep the meta-optimizer state of the best.
    last_collapsed: the meta-parameters of the latest collapsed validation.
  """

  keep_opt_state: bool = False
  last_collapsed: Any = None

  def initial(self, meta_params, meta_opt_state) -> dict[str, Any]:
    best = {"meta_params": meta_params, "score": np.asarray(-np.inf, np.float32),
            "iteration": np.asarray(-1, np.int32)}
    if self.keep_opt_state:
      best["meta_opt_state"] = _copy(meta_opt_state)
    return best

  def observe(self, best: dict[str, Any], validation: dict[str, float], meta_params,
              meta_opt_state, iteration: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The best after a validation at meta-step `iteration`, and the fields for its record."""
    score = score_of(validation)
    is_collapsed = collapsed(validation)
    if is_collapsed:
      self.last_collapsed = meta_params
    elif score > float(best["score"]):
      best = {"meta_params": meta_params, "score": np.asarray(score, np.float32),
              "iteration": np.asarray(iteration, np.int32)}
      if self.keep_opt_state:
        best["meta_opt_state"] = _copy(meta_opt_state)
    return best, {"validation_score": score, "collapsed": is_collapsed,
                  "best_validation_score": float(best["score"])}

  @staticmethod
  def found(best: dict[str, Any]) -> bool:
    """False while every validation collapsed."""
    return int(best["iteration"]) >= 0

  def selected(self, best: dict[str, Any], meta_params):
    """What the run returns: the best, or (all collapsed) the last collapsed / last ones."""
    if self.found(best):
      return best["meta_params"]
    return self.last_collapsed if self.last_collapsed is not None else meta_params
