"""Output folders pinned to one configuration: `claim_folder`, and `safe_name`.

A run directory, an evaluation folder and a study folder all follow one rule:
the configuration (a JSON-able dict, its *identity*) is written into a new or
empty folder; a folder holding the same identity is accepted (a rerun or a
resume); a folder holding another identity, or anything without one, is
refused before a byte is written. `claim_folder` is that rule;
`FolderClaimError` says which case refused and carries both identities, so a
caller can word the one-line message its users know.

`lock_folder` gives a folder one writer at a time: an OS-level lock
(`fcntl.flock`) on the folder's `.lock` file, which names its holder (host and
PID). The kernel drops the lock when the holding process dies, so a killed run
leaves nothing to clean up. A second process is refused at once with
`FolderLockedError` naming the holder; inside one process the lock is shared,
so a folder reopened by the process that holds it is not refused.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import threading
from typing import Any, Callable

import numpy as np

from flatl2o import atomic_files


def safe_name(text: str) -> str:
  """`text` as one folder name: every run of other characters than [A-Za-z0-9_.-] becomes '_'.

  Args:
    text: any string (a task, optimizer or configuration name).

  Returns:
    `text` with each run of characters other than word characters, '.' and '-' replaced by a
    single '_' (so it holds no '/').
  """
  return re.sub(r"[^\w.-]+", "_", text)


def as_json(value: Any) -> Any:
  """`value` as it reads back from a JSON file (tuples as lists, keys as strings).

  Args:
    value: a JSON-able value; NumPy scalars and arrays are accepted (as numbers and lists).

  Returns:
    `json.loads(json.dumps(value))`: plain dicts, lists, strings, numbers, booleans and None.
  """
  return json.loads(json.dumps(value, default=_plain))


def _plain(x):
  if isinstance(x, (np.generic, np.ndarray)):
    return x.tolist()
  raise TypeError(f"cannot write {type(x).__name__} as JSON")


class OutputFolderError(ValueError):
  """An output folder that cannot be written: a file, under a file, unwritable, read-only."""


def check_output_folder(path: str, what: str = "output folder") -> None:
  """Refuses, before anything is written, a folder that outputs could not be written to.

  Args:
    path: the folder (new, or an earlier run's).
    what: how the message names it (e.g. "--run_dir").

  Raises:
    OutputFolderError: `path` is empty, is a file, lies under a file, or its nearest
      existing folder is on a read-only filesystem or not writable by this user; the
      one-line message names the path and what is accepted. Nothing is created.
  """
  if not path:
    raise OutputFolderError(f"{what} is empty; give a folder to write to")
  absolute = os.path.abspath(path)
  if os.path.exists(absolute) and not os.path.isdir(absolute):
    raise OutputFolderError(f"{what}={path} is a file, not a folder; give a new folder or "
                            "one an earlier run wrote")
  existing = absolute
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise OutputFolderError(f"{what}={path} lies under {existing}, which is a file, not a "
                            "folder; give a folder whose parents are folders")
  if os.statvfs(existing).f_flag & os.ST_RDONLY:
    raise OutputFolderError(f"{what}={path}: {existing} is on a read-only filesystem; give "
                            "a folder on a writable one")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise OutputFolderError(f"{what}={path}: {existing} is not writable by this user; give a "
                            "folder you can write to")


def first_difference(old: Any, new: Any, prefix: str = "") -> str:
  """The first differing key of two JSON values (sorted, depth first), as 'key was X, now Y'.

  Args:
    old: the value found (e.g. a folder's recorded identity).
    new: the value asked for.
    prefix: the dotted path of `old` and `new` within the outer value ("" at the top).

  Returns:
    'PATH was X, now Y' with PATH the dotted key path of the first differing entry (a key
    missing on one side reads None) and X, Y the `repr`s there; when `old` and `new` are not
    both dicts, PATH is `prefix` without its trailing '.'.
  """
  if isinstance(old, dict) and isinstance(new, dict):
    for k in sorted(set(old) | set(new)):
      if old.get(k) != new.get(k):
        return first_difference(old.get(k), new.get(k), f"{prefix}{k}.")
  return f"{prefix.rstrip('.')} was {old!r}, now {new!r}"


def differing_keys(old: dict, new: dict) -> list[str]:
  """Top-level keys whose values differ: `new`'s order first, then keys of one only, sorted.

  Args:
    old: the dict found.
    new: the dict asked for.

  Returns:
    The keys whose values differ (a missing key reads None): keys of both in `new`'s order,
    then keys of only one of them, sorted.
  """
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
  if os.path.isdir(path) and [n for n in os.listdir(path) if n != LOCK_FILE]:
    raise FolderClaimError(f"folder {path} is not empty and holds no {filename}; use an empty "
                           "or new folder", path, "foreign", identity=wanted)
  if write and key is None:
    atomic_files.write_json(file, wanted)
  return True


LOCK_FILE = ".lock"

# The folders this process holds: realpath -> [file descriptor, holders].
_held: dict[str, list[int]] = {}
_held_guard = threading.RLock()  # re-entrant: a FolderLock collected inside it releases


class FolderLockedError(ValueError):
  """Another process holds the folder (its lock file names it: `holder`)."""

  def __init__(self, message: str, path: str, holder: str):
    super().__init__(message)
    self.path, self.holder = path, holder


class FolderLock:
  """A held folder; `release()` (or `with`, or process exit) lets it go."""

  def __init__(self, path: str, key: str | None):
    self.path, self._key = path, key

  @property
  def held(self) -> bool:
    return self._key is not None

  def release(self) -> None:
    """Lets the folder go (when no other holder in this process keeps it)."""
    key, self._key = self._key, None
    if key is None:
      return
    with _held_guard:
      entry = _held.get(key)
      if entry is None:
        return
      entry[1] -= 1
      if entry[1] == 0:
        del _held[key]
        os.close(entry[0])  # closing the descriptor drops the flock

  def __enter__(self) -> "FolderLock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def __del__(self):
    try:
      self.release()
    except Exception:  # pylint: disable=broad-except  (interpreter shutdown)
      pass


def holder_of(path: str) -> str:
  """Who the lock file of `path` names ('PID N on host H'), or 'another process'.

  Args:
    path: the locked folder (its `.lock` file is read).

  Returns:
    'PID N on host H' from the lock file's "pid" and "host"; 'another process' when the file
    is missing, unreadable or names no holder.
  """
  try:
    with open(os.path.join(path, LOCK_FILE)) as f:
      found = json.load(f)
    return f"PID {int(found['pid'])} on host {found['host']}"
  except (OSError, ValueError, KeyError, TypeError):
    return "another process"


def lock_folder(path: str, what: str = "folder") -> FolderLock:
  """Holds `path` for this process (creating it), or refuses at once.

  Args:
    path: the folder; its `.lock` file carries the lock and names the holder.
    what: how the one-line error names the folder ("run directory", ...).

  Returns:
    A `FolderLock`, held until `release()`, garbage collection or process exit.

  Raises:
    FolderLockedError: another process holds it; nothing was written.
  """
  key = os.path.realpath(path)
  with _held_guard:
    if key in _held:
      _held[key][1] += 1
      return FolderLock(path, key)
    os.makedirs(path, exist_ok=True)
    fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 atomic_files.umask_mode())
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      holder = holder_of(path)
      raise FolderLockedError(f"{what} {path} is in use by {holder}; wait for it or use "
                              f"another {what}", path, holder) from None
    try:
      note = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode() + b"\n"
      os.ftruncate(fd, 0)
      os.pwrite(fd, note, 0)
    except OSError:
      pass  # a full disk: the lock holds all the same, the note names nobody
    _held[key] = [fd, 1]
    return FolderLock(path, key)
