"""One string names any optimizer: `resolve(spec)` -> an optax transformation.

A spec is
- a hand-designed optimizer's name (`adam`, `sgd`, ... : `optimizers.names()`),
  optionally with a learning rate;
- `pretrained:NAME`, a learned optimizer shipped with flatl2o
  (`flatl2o.pretrained.names()`);
- the folder of an exported learned optimizer (`RUN_DIR/optimizer`).

This module sits above `checkpoints` and `pretrained` (it loads from both);
`flatl2o.optimizers.resolve` is this `resolve`, imported when first asked for.
"""

from __future__ import annotations

import json
import os

from flatl2o import checkpoints, pretrained
from flatl2o.optimizers import registry

PRETRAINED_PREFIX = "pretrained:"


def is_hand_designed(spec: str) -> bool:
  """Whether `spec` names a hand-designed optimizer.

  Args:
    spec: an optimizer spec (see the module docstring).

  Returns:
    True when `spec` is one of `flatl2o.optimizers.names()` (the registered hand-designed
    optimizers).
  """
  return spec in registry.names()


def pretrained_name(spec: str) -> str | None:
  """NAME of `pretrained:NAME`, else None.

  Args:
    spec: an optimizer spec (see the module docstring).

  Returns:
    What follows the `pretrained:` prefix (not checked against `flatl2o.pretrained.names()`),
    or None when `spec` does not start with it.
  """
  return spec[len(PRETRAINED_PREFIX):] if spec.startswith(PRETRAINED_PREFIX) else None


def export_path(spec: str) -> str:
  """The export folder of a learned spec: its path, or a pretrained optimizer's package folder.

  Args:
    spec: `pretrained:NAME` or the folder of an exported learned optimizer.

  Returns:
    `flatl2o.pretrained.path(NAME)` for `pretrained:NAME` (which raises `PretrainedError` for
    an unknown NAME); otherwise `spec` itself, unchecked.
  """
  name = pretrained_name(spec)
  if name is None:
    return spec
  return pretrained.path(name)


def export_description(spec: str) -> dict:
  """The `optimizer.json` of a learned spec's export (architecture, sha256, ...).

  Args:
    spec: `pretrained:NAME` or the folder of an exported learned optimizer (`export_path`).

  Returns:
    The parsed `optimizer.json`: format, version, architecture, hparams, array shapes, sha256,
    written_by and, when present, metadata.
  """
  with open(os.path.join(export_path(spec), "optimizer.json")) as f:
    return json.load(f)


def resolve(spec: str, learning_rate: float | None = None):
  """The optax transformation `spec` names.

  Args:
    spec: a hand-designed optimizer's name, `pretrained:NAME`, or the folder of
      an exported learned optimizer.
    learning_rate: for hand-designed optimizers only (None: its default).

  Raises:
    ValueError: an unknown spec (one line naming what is accepted), a learning
      rate given to a learned optimizer, an unknown pretrained NAME, or a
      missing or corrupted export (`checkpoints.CheckpointError`).

  Returns:
    An optax transformation (a learned one takes `loss=` in `update` where its
    architecture reads it).

  Example:

  >>> from flatl2o.resolve import resolve
  >>> type(resolve("adam", learning_rate=0.01)).__name__
  'GradientTransformationExtraArgs'
  >>> resolve("pretrained:l2o_dm") is not None
  True
  """
  if is_hand_designed(spec):
    return registry.get(spec, learning_rate=learning_rate)
  name = pretrained_name(spec)
  if name is not None:
    tx = pretrained.load(name)  # unknown NAME: one line listing the names
    if learning_rate is not None:
      raise ValueError("--learning_rate applies to hand-designed optimizers only, not to "
                       f"the pretrained optimizer {name}")
    return tx
  if os.sep in spec or os.path.exists(spec):
    if learning_rate is not None:
      raise ValueError("--learning_rate applies to hand-designed optimizers only, not to "
                       f"the learned optimizer {spec}")
    return checkpoints.load_optimizer(spec)
  hint = (f"; {spec!r} is an architecture: meta-train it with experiments.meta_train "
          "and pass RUN_DIR/optimizer" if spec in registry.learned_names() else "")
  if spec in pretrained.names():
    hint += f"; the shipped pretrained one is --optimizer={PRETRAINED_PREFIX}{spec}"
  raise ValueError(f"unknown optimizer {spec!r}; accepted: "
                   f"{', '.join(registry.names())}, the path of an exported optimizer, or "
                   f"{PRETRAINED_PREFIX}NAME ({', '.join(pretrained.names())}){hint}")
