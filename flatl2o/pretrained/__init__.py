"""Pretrained learned optimizers shipped with flatl2o: load one by name, offline.

Each folder `flatl2o/pretrained/NAME/` holds an exported optimizer exactly as
`flatl2o.save_optimizer` writes it (`optimizer.json` and `meta_params.npz`,
whose SHA-256 the description holds) and its card: `card.json` (what it is,
how it was meta-trained, and measured figures with the commands that produced
them) and `card.md` (the same, rendered for people).

Example:
  >>> import flatl2o
  >>> flatl2o.pretrained.names()
  ('l2o_dm', 'l2o_dm_entropy', 'l2o_dm_hessian', 'rnnprop')
  >>> tx = flatl2o.pretrained.load("l2o_dm")      # an optax transformation
  >>> opt_state = tx.init(params)
  >>> updates, opt_state = tx.update(grads, opt_state, params)
  >>> flatl2o.pretrained.card("l2o_dm")["training"]["validation_accuracy"]

From the command line: `python -m experiments.evaluate --optimizer=pretrained:l2o_dm`.
A new one is added with `add(name, export_dir, card)` or
`python scripts/add_pretrained.py --name=NAME --export_dir=RUN_DIR/optimizer
--card_json=card.json`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import optax

from flatl2o import _checks, atomic_files, checkpoints
from flatl2o.pretrained import _cards
from flatl2o.pretrained._cards import CARD_FIELDS, TRAINING_FIELDS, render_card

ROOT = os.path.dirname(os.path.abspath(__file__))
CARD_JSON = "card.json"
CARD_MD = "card.md"
FILES = (*checkpoints.EXPORT_FILES, CARD_JSON, CARD_MD)
_NAME = re.compile(r"[a-z][a-z0-9_]*")

__all__ = ["CARD_FIELDS", "PretrainedError", "ROOT", "TRAINING_FIELDS", "add", "card",
           "load", "load_learned", "names", "path", "render_card"]


class PretrainedError(ValueError):
  """An unknown pretrained optimizer, or a bad name, export or card given to `add`."""


def names(root: str | None = None) -> tuple[str, ...]:
  """The pretrained optimizers (sorted): every folder of `root` holding an export.

  Args:
    root: the folder holding the pretrained optimizers; None: the shipped ones (`ROOT`).

  Returns:
    The sorted names of the folders of `root` that are valid names (lower-case letters,
    digits and '_', starting with a letter) and hold an `optimizer.json`; empty if `root` is
    not a folder.
  """
  root = root or ROOT
  if not os.path.isdir(root):
    return ()
  return tuple(sorted(
      n for n in os.listdir(root)
      if _NAME.fullmatch(n) and os.path.isfile(os.path.join(root, n, checkpoints.EXPORT_FILES[0]))))


def path(name: str, root: str | None = None) -> str:
  """The folder of pretrained optimizer `name` (a `flatl2o.load_optimizer` export).

  Args:
    name: one of `names(root)`.
    root: the folder holding the pretrained optimizers; None: the shipped ones (`ROOT`).

  Returns:
    The path `root/name` (under `ROOT` when `root` is None).

  Raises:
    PretrainedError: `name` is not one of `names(root)` (the message suggests a close one).
  """
  known = names(root)
  if name not in known:
    raise PretrainedError(
        f"unknown pretrained optimizer {name!r}{_checks.did_you_mean(name, known)}; accepted: "
        f"{', '.join(known) if known else '(none installed)'}")
  return os.path.join(root or ROOT, name)


def load(name: str, root: str | None = None) -> optax.GradientTransformationExtraArgs:
  """Pretrained optimizer `name` as a ready optax transformation (offline, checksum checked).

  Args:
    name: one of `names(root)` (`PretrainedError` otherwise, from `path`).
    root: the folder holding the pretrained optimizers; None: the shipped ones (`ROOT`).

  Returns:
    An `optax.GradientTransformationExtraArgs` applying the learned optimizer with its
    pretrained meta-parameters (`flatl2o.checkpoints.load_optimizer`).

  Example:

  >>> import jax.numpy as jnp, optax, flatl2o
  >>> tx = flatl2o.pretrained.load("l2o_dm")  # offline: package data
  >>> params = {"w": jnp.array([1.0, -2.0])}
  >>> updates, state = tx.update({"w": 2 * params["w"]}, tx.init(params), params)
  >>> bool(jnp.all(jnp.sign(updates["w"]) == -jnp.sign(params["w"])))  # downhill
  True
  """
  return checkpoints.load_optimizer(path(name, root))


def load_learned(name: str, root: str | None = None):
  """`(lopt, meta_params)` of pretrained optimizer `name`, e.g. to fine-tune it.

  Args:
    name: one of `names(root)` (`PretrainedError` otherwise, from `path`).
    root: the folder holding the pretrained optimizers; None: the shipped ones (`ROOT`).

  Returns:
    `(lopt, meta_params)`: the learned-optimizer architecture and its meta-parameters, as
    `flatl2o.checkpoints.load_learned` returns them.
  """
  return checkpoints.load_learned(path(name, root))


def card(name: str, root: str | None = None) -> dict[str, Any]:
  """The machine-readable card (`card.json`) of pretrained optimizer `name`.

  Args:
    name: one of `names(root)` (`PretrainedError` otherwise, from `path`).
    root: the folder holding the pretrained optimizers; None: the shipped ones (`ROOT`).

  Returns:
    The parsed `card.json`: what the optimizer is, how it was meta-trained, and its measured
    figures with the commands that produced them.

  Raises:
    PretrainedError: `card.json` is missing, unreadable or not JSON.
  """
  card_path = os.path.join(path(name, root), CARD_JSON)
  try:
    with open(card_path) as f:
      return json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise PretrainedError(f"{card_path} is unreadable ({e}); reinstall flatl2o") from None


def add(name: str, export_dir: str, card: dict[str, Any], root: str | None = None,
        overwrite: bool = False) -> str:  # pylint: disable=redefined-outer-name
  """Copies an export into `root/name` with its card; returns the new folder.

  The export is fully checked (`flatl2o.checkpoints.load_learned`) and the card
  against it (`CARD_FIELDS`, `TRAINING_FIELDS`, the architecture and
  hyper-parameters); `name`, `architecture`, `hparams` and `export_sha256` are
  filled in from the export where the card lacks them. The folder is written
  beside its final place and renamed into it, so a crash never leaves half of
  one. An existing name is refused unless `overwrite=True`; `export_dir` may be
  the folder being replaced (to update its card).

  Args:
    name: the new optimizer's name: lower-case letters, digits and '_', starting with a
      letter.
    export_dir: the export to copy, as `flatl2o.save_optimizer` writes it.
    card: the card's fields (`CARD_FIELDS`, with `TRAINING_FIELDS` under "training"); the
      filled-in card is written as `card.json` and rendered as `card.md`.
    root: the folder to add it to; None: the shipped ones (`ROOT`).
    overwrite: replace an existing optimizer of that name.

  Returns:
    The new folder, `root/name` (absolute).

  Raises:
    PretrainedError: a bad name, an existing name without `overwrite`, or a card
      that does not fit the export (nothing is written).
    flatl2o.checkpoints.CheckpointError: a missing or corrupted export.
  """
  root = os.path.abspath(root or ROOT)
  if not isinstance(name, str) or not _NAME.fullmatch(name):
    raise PretrainedError(f"pretrained optimizer names are lower-case letters, digits and '_', "
                          f"starting with a letter; got {name!r}")
  target = os.path.join(root, name)
  if os.path.exists(target) and not overwrite:
    raise PretrainedError(f"pretrained optimizer {name!r} already exists in {root}; pass "
                          "overwrite=True (--overwrite) to replace it (nothing was written)")
  lopt, _ = checkpoints.load_learned(export_dir)  # every check of the export format
  with open(os.path.join(export_dir, checkpoints.EXPORT_FILES[0])) as f:
    description = json.load(f)
  full_card = _cards.complete(name, card, description, lopt, PretrainedError)
  # card.md from the card as card.json stores it (keys sorted), so card(name) renders the same.
  full_card = json.loads(json.dumps(full_card, sort_keys=True, default=atomic_files.jsonable))

  def fill(folder):
    for filename in checkpoints.EXPORT_FILES:
      shutil.copyfile(os.path.join(export_dir, filename), os.path.join(folder, filename))
    atomic_files.write_json(os.path.join(folder, CARD_JSON), full_card)
    atomic_files.write_text(os.path.join(folder, CARD_MD), render_card(full_card))
    checkpoints.load_learned(folder)  # the copy is whole

  atomic_files.write_folder(target, fill)
  return target
