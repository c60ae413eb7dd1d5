"""A study's results as JSON cells under `run_dir/cells/`, and the folder's identity.

Each stage's result is one cell (`cells/meta/NAME.json`, `cells/test/OPTIMIZEE/NAME.json`,
...), written atomically, so an interrupted study continues where it stopped; a
cell that cannot be read back (damaged by hand or a failing disk) is recomputed,
with a warning. One process at a time holds the folder (`folders.lock_folder`).
`run_dir/protocol.json` pins the configuration (`folders.claim_folder`): a
folder of another configuration is refused before anything is written.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from typing import Any, Callable

from flatl2o import atomic_files, folders
from flatl2o.study.config import StudyConfig, upgrade_identity

IDENTITY_FILE = "protocol.json"

_log = logging.getLogger(__name__)


def check(run_dir: str, config: StudyConfig) -> None:
  """`claim` without writing: refuses a folder of another configuration (ValueError).

  Args:
    run_dir: the study folder.
    config: the configuration the folder must hold (or be empty for).
  """
  claim(run_dir, config, write=False)


def claim(run_dir: str, config: StudyConfig, write: bool = True) -> None:
  """Pins `config` to `run_dir` (protocol.json), or refuses the folder (ValueError).

  An older protocol.json is read as this version writes it (`upgrade_identity`),
  and a field it lacks counts as its default. With `write=False` it only checks.

  Args:
    run_dir: the study folder.
    config: the configuration to pin; its `identity()` is written to protocol.json.
    write: whether to write protocol.json into a new or empty folder (False: only check).

  Returns:
    None: `run_dir` is pinned to `config` (or, with `write=False`, found fit for it).

  Raises:
    ValueError: when `run_dir` is not empty and holds no readable protocol.json, or holds
      that of another configuration.
  """
  def normalize(found: dict, wanted: dict) -> dict:
    del wanted
    found = upgrade_identity(found)
    defaults = folders.as_json(StudyConfig(
        preset=config.preset, other_dataset=found.get("other_dataset")).identity())
    return {**{k: defaults[k] for k in defaults if k not in found}, **found}

  try:
    folders.claim_folder(run_dir, config.identity(), filename=IDENTITY_FILE,
                         normalize=normalize, write=write)
  except folders.FolderClaimError as e:
    if e.reason != "other":
      raise ValueError(f"run directory {run_dir} is not empty and holds no readable "
                       f"{IDENTITY_FILE}; pass an empty or new --run_dir") from None
    changed = sorted(folders.differing_keys(e.found, e.identity))
    raise ValueError(f"run directory {run_dir} holds a reproduction of another "
                     f"configuration (differs in {', '.join(changed)}); pass another "
                     "--run_dir or remove it") from None


class Cells:
  """JSON cells in `run_dir/cells/`, written atomically; claims the run directory."""

  def __init__(self, run_dir: str, config: StudyConfig):
    self.run_dir = run_dir
    self.computed = 0  # cells written by this process
    self.on_put: Callable[[], Any] | None = None  # called after each cell is written
    check(run_dir, config)  # another configuration's folder is refused before the lock
    # One study per folder: held while this object lives (`release()`, process exit).
    self._lock = folders.lock_folder(run_dir, "run directory")
    claim(run_dir, config)

  def release(self) -> None:
    """Lets another process take the study folder."""
    self._lock.release()

  def path(self, *parts: str) -> str:
    """The file of one cell.

    Args:
      *parts: the cell's name: folders under `run_dir/cells`, then the file name without
        `.json`.

    Returns:
      The path `run_dir/cells/PARTS....json`.
    """
    return os.path.join(self.run_dir, "cells", *parts[:-1], parts[-1] + ".json")

  def get(self, *parts: str) -> dict | None:
    """The cell, or None when it is missing or unreadable (then it is recomputed).

    An unreadable cell (not JSON, or not a JSON object) is logged as a warning.

    Args:
      *parts: the cell's name, as for `path`.

    Returns:
      The cell's JSON object, or None.
    """
    path = self.path(*parts)
    if not os.path.exists(path):
      return None
    try:
      with open(path) as f:
        value = json.load(f)
      if not isinstance(value, dict):
        raise ValueError(f"a JSON {type(value).__name__}, not an object")
      return value
    except (OSError, ValueError) as e:
      _log.warning("study cell %s is unreadable (%s); recomputing it",
                   path, str(e).splitlines()[0] if str(e) else type(e).__name__)
      return None

  def put(self, value: dict, *parts: str) -> dict:
    """Writes a cell atomically, counts it in `computed` and calls `on_put` if set.

    Args:
      value: the cell, a JSON-serializable dict.
      *parts: the cell's name, as for `path`.

    Returns:
      `value`, unchanged.
    """
    atomic_files.write_json(self.path(*parts), value)
    self.computed += 1
    if self.on_put is not None:
      self.on_put()
    return value


def cell_names(run_dir: str) -> list[str]:
  """Every cached cell, relative to `run_dir/cells` (for progress and tests).

  Args:
    run_dir: the study folder.

  Returns:
    The sorted cell names, each a path under `run_dir/cells` without `.json`.
  """
  root = os.path.join(run_dir, "cells")
  return sorted(os.path.relpath(p, root)[:-5]
                for p in glob.glob(os.path.join(root, "**", "*.json"), recursive=True))
