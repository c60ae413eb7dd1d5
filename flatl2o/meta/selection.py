"""Model selection during meta-training: the best validated meta-parameters, never collapsed.

Every `validation_every` meta-steps the learned optimizer trains fresh optimizees
for `validation_horizon` steps and is scored on the validation split (accuracy,
or minus the loss for tasks without accuracy). `Selector` keeps the
best-scoring meta-parameters, skipping any that collapsed: an optimizer whose
validation runs end above `COLLAPSE_RATIO` of their starting training loss has
stopped optimizing (a too-large flatness coefficient can teach it to stand
still, which is "flat" and useless; without a flatness term it has simply not
learned yet). Only while every validation collapsed does it hold the
best-scoring collapsed one, which a run then exports marked as such
(`status`). A new selection rule is a new `Selector`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

COLLAPSE_RATIO = 0.9


def collapsed(metrics: dict[str, float]) -> bool:
  """True when the validation runs no longer lower the training loss (or blew up).

  Args:
    metrics: a validation's metrics, with `final_train_loss` and `initial_train_loss`.

  Returns:
    True when the final training loss is not finite or above `COLLAPSE_RATIO` times
    the initial one.
  """
  final, initial = metrics["final_train_loss"], metrics["initial_train_loss"]
  return not np.isfinite(final) or final > COLLAPSE_RATIO * initial


def score_of(metrics: dict[str, float]) -> float:
  """Higher is better: validation accuracy, or minus the validation loss.

  Args:
    metrics: a validation's metrics, with `accuracy` or else `loss`.

  Returns:
    The score as a float; -inf when it is not finite.
  """
  if "accuracy" in metrics:
    value = metrics["accuracy"]
  else:
    value = -metrics["loss"]
  return float(value) if np.isfinite(value) else -np.inf


def own_copy(tree):
  """A copy of `tree` with buffers of its own.

  Args:
    tree: a pytree of arrays.

  Returns:
    The pytree with every leaf copied (`jnp.copy`).
  """
  # The meta-step donates the meta-optimizer state: a kept copy needs its own buffers.
  return jax.tree.map(jnp.copy, tree)


@dataclasses.dataclass
class Selector:
  """Best by validation score among the validations that did not collapse.

  Its checkpointed part is the `best` dict (`meta_params`, `score`, `iteration`,
  and `meta_opt_state` with `keep_opt_state`, which a curriculum restarts
  from). While every validation collapsed, `best` holds the best-scoring
  collapsed validation with `iteration` encoded as `-2 - meta_step` (so the
  checkpoint keeps its layout and a resumed run still knows it); -1 means no
  validation yet. Any validation that did not collapse replaces it.

  Attributes:
    keep_opt_state: also keep the meta-optimizer state of the best.
  """

  keep_opt_state: bool = False

  def initial(self, meta_params, meta_opt_state) -> dict[str, Any]:
    """The `best` dict before any validation.

    Args:
      meta_params: the initial meta-parameters.
      meta_opt_state: the initial meta-optimizer state (copied with `keep_opt_state`).

    Returns:
      `{'meta_params', 'score': -inf, 'iteration': -1}` (and `meta_opt_state`).
    """
    best = {"meta_params": meta_params, "score": np.asarray(-np.inf, np.float32),
            "iteration": np.asarray(-1, np.int32)}
    if self.keep_opt_state:
      best["meta_opt_state"] = own_copy(meta_opt_state)
    return best

  def observe(self, best: dict[str, Any], validation: dict[str, float], meta_params,
              meta_opt_state, iteration: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The best after a validation at meta-step `iteration`, and the fields for its record.

    Args:
      best: the current `best` dict.
      validation: the validation's metrics (`score_of`, `collapsed`).
      meta_params: the meta-parameters that were validated.
      meta_opt_state: their meta-optimizer state (copied with `keep_opt_state`).
      iteration: the meta-step of the validation.

    Returns:
      `(best, record)`: the updated `best` dict, and `{'validation_score',
      'collapsed', 'best_validation_score'}`.
    """
    score = score_of(validation)
    is_collapsed = collapsed(validation)
    found = self.found(best)
    if is_collapsed:
      # Held only until a validation does not collapse: what an all-collapsed run exports.
      take = not found and (int(best["iteration"]) == -1 or score > float(best["score"]))
      kept_iteration = -2 - iteration
    else:
      take = score > (float(best["score"]) if found else -np.inf)
      kept_iteration = iteration
    if take:
      best = {"meta_params": meta_params, "score": np.asarray(score, np.float32),
              "iteration": np.asarray(kept_iteration, np.int32)}
      if self.keep_opt_state:
        best["meta_opt_state"] = own_copy(meta_opt_state)
    return best, {"validation_score": score, "collapsed": is_collapsed,
                  "best_validation_score": self.best_score(best)}

  @staticmethod
  def found(best: dict[str, Any]) -> bool:
    """False while every validation collapsed.

    Args:
      best: the `best` dict.

    Returns:
      Whether `best` holds a validation that did not collapse.
    """
    return int(best["iteration"]) >= 0

  @classmethod
  def best_score(cls, best: dict[str, Any]) -> float:
    """The best score among validations that did not collapse (-inf while none).

    Args:
      best: the `best` dict.

    Returns:
      The score, a float.
    """
    return float(best["score"]) if cls.found(best) else float("-inf")

  @classmethod
  def best_iteration(cls, best: dict[str, Any]) -> int:
    """The meta-step of that best (-1 while none).

    Args:
      best: the `best` dict.

    Returns:
      The meta-step, an int.
    """
    return int(best["iteration"]) if cls.found(best) else -1

  @staticmethod
  def selected_at(best: dict[str, Any]) -> tuple[int, float]:
    """Meta-step and score of what `selected` returns, collapsed or not ((-1, -inf): none).

    Args:
      best: the `best` dict.

    Returns:
      `(meta_step, score)`, an int and a float.
    """
    iteration = int(best["iteration"])
    if iteration == -1:
      return -1, float("-inf")
    return (iteration if iteration >= 0 else -2 - iteration), float(best["score"])

  def selected(self, best: dict[str, Any], meta_params):
    """What the run returns: the best; all collapsed, the best collapsed; none, `meta_params`.

    Args:
      best: the `best` dict.
      meta_params: the current meta-parameters (returned before any validation).

    Returns:
      The selected meta-parameters.
    """
    if int(best["iteration"]) == -1:
      return meta_params
    return best["meta_params"]
