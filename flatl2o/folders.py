"""Output folders pinned to one configuration: `claim_folder`, and `safe_name`.

A run directory, an evaluation folder and a study folder all follow one rule:
the configuration (a JSON-able dict, its *identity*) is written into a new or
empty folder; a folder holding the same identity is accepted (a rerun or a
resume); a folder holding another identity, or anything without one, is
refused before a byte is written. `claim_folder` is that rule;
`FolderClaimError` says which case refused and carries both identities, so a
caller can word the one-line message its users know.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable

import numpy as np

from flatl2o import report


def safe_name(text: str) -> str:
  """`text` as one folder name: every run of other characters than [A-Za-z0-9_.-] becomes '_'."""
  return re.sub(r"[^\w.-]+", "_", text)


def as_json(value: Any) -> Any:
  """`value` as it reads back from a JSON file (tuples as lists, keys as strings)."""
  return json.loads(json.dumps(value, default=_plain))


def _plain(x):
  if isinstance(x, (np.generic, np.ndarray)):
    return x.tolist()
  raise TypeError(f"cannot write {type(x).__name__} as JSON")


def first_difference(old: Any, new: Any, prefix: str = "") -> str:
  """The first differing key of two JSON values (sorted, depth first), as 'key was X, now Y'."""
  if isinstance(old, dict) and isinstance(new, dict):
    for k in sorted(set(old) | set(new)):
      if old.get(k) != new.get(k):
        return first_difference(old.get(k), new.get(k), f"{prefix}{k}.")
  return f"{prefix.rstrip('.')} was {old!r}, now {new!r}"


def differing_keys(old: dict, new: dict) -> list[str]:
  """Top-level keys whose values differ: `new`'s order first, then keys of one only, sorted."""
  order = [k for k in new if k in old] + sorted(set(old) ^ set(new))
  return [k for k in order if old.get(k) != new.get(k)]


class FolderClaimError(ValueError):
  """A folder belongs to something else.

  Attributes:
    path: the folder.
    reason: "other" (another identity), "foreign" (not empty, no identity file)
      or "unreadable" (an identity file that is not JSON).
    found: the identity found there (after `normalize`), or None.
    identity: the identity that was asked for (as JSON reads it back).
  """

  def __init__(self, message: str, path: str, reason: str, found: Any = None,
               identity: Any = None):
    super().__init__(message)
    self.path, self.reason, self.found, self.identity = path, reason, found, identity


def claim_folder(path: str, identity: dict[str, Any], *, filename: str = "identity.json",
                 key: str | None = None,
                 normalize: Callable[[dict, dict], dict] | None = None,
                 write: bool = True) -> bool:
  """Pins `identity` to the folder `path`, or refuses it.

  Args:
    path: the folder (created when `identity` is written into it).
    identity: the configuration, a JSON-able dict.
    filename: the file of the folder that holds the identity.
    key: where in that file the identity is (None: the whole file), for a file
      that holds more (an evaluation's summary.json under "identity").
    normalize: `normalize(found, identity) -> found`, the found identity as this
      version would write it (fields an older file lacks count as their
      defaults, renamed values...), applied before comparing.
    write: whether to write the identity file into a new or empty folder
      (False: a file written later holds it, or another process writes it).

  Returns:
    True when the folder was new or empty, False when it holds `identity`.

  Raises:
    FolderClaimError: the folder holds another identity or none; its message
      names the first differing key. Nothing is written.
  """
  wanted = as_json(identity)
  file = os.path.join(path, filename)
  if os.path.exists(file):
    try:
      with open(file) as f:
        found = json.load(f)
    except (OSError, ValueError) as e:
      raise FolderClaimError(f"{file} is unreadable ({e}); use another folder", path,
                             "unreadable") from None
    if key is not None:
      found = found.get(key) if isinstance(found, dict) else None
      if found is None:
        raise FolderClaimError(f"folder {path} holds a {filename} without its {key}; use an "
                               "empty or new folder", path, "foreign", identity=wanted)
    if normalize is not None:
      found = normalize(found, wanted)
    if found != wanted:
      raise FolderClaimError(
          f"folder {path} belongs to another configuration ({first_difference(found, wanted)}); "
          "use another folder or the original settings", path, "other", found, wanted)
    return False
  if os.path.isdir(path) and os.listdir(path):
    raise FolderClaimError(f"folder {path} is not empty and holds no {filename}; use an empty "
                           "or new folder", path, "foreign", identity=wanted)
  if write and key is None:
    report.write_json(file, wanted)
  return True
