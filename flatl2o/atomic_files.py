"""Files written whole or not at all: the atomic writes every module of flatl2o uses.

Every file is written to a temporary name in its folder and renamed into place
(`atomic_write`, `write_text`, `write_json`, `write_jsonl`); a folder is filled
beside its place and swapped in (`write_folder`). An interrupted run never
leaves a half-written file behind; a write that fails (a full disk, a
read-only folder) raises `WriteError` in one line and leaves the previous file
or folder as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Iterable, Mapping

import numpy as np


def umask_mode(base: int = 0o666) -> int:
  """`base` less the process umask: the mode `open()` would give a new file (0o777: a folder).

  `tempfile.mkstemp` / `mkdtemp` create 0600 / 0700 entries whatever the umask;
  results renamed from them into place must get the mode users expect.

  Args:
    base: the requested permission bits; 0o666 (a file) by default, 0o777 for a folder.

  Returns:
    `base` with the bits of the current umask cleared (the umask itself is left unchanged).
  """
  mask = os.umask(0)
  os.umask(mask)
  return base & ~mask


class WriteError(OSError, ValueError):
  """A write that failed (a full disk, a read-only folder); what was there is intact.

  An `OSError` (its `errno` is the cause's) and a `ValueError`, so the binaries
  print its one line and exit with a non-zero code.
  """


def write_failed(path: str, error: OSError, kept: str = "nothing there was replaced") -> WriteError:
  """`error` (raised writing `path`) as a one-line `WriteError`; `kept` says what is intact.

  Args:
    path: the file or folder whose write failed, named in the message.
    error: the `OSError` raised while writing `path`.
    kept: what is still intact, appended to the message.

  Returns:
    `error` itself if it is already a `WriteError`; otherwise a new `WriteError` whose message
    gives `path`, the reason (`error.strerror` or the first line of `error`) and `kept`, and
    whose `errno` is `error.errno`.
  """
  if isinstance(error, WriteError):
    return error
  reason = error.strerror or (str(error).splitlines()[0] if str(error) else type(error).__name__)
  out = WriteError(f"cannot write {path}: {reason}; {kept}: free space (or fix the folder) and "
                   "rerun")
  out.errno = error.errno
  return out


def atomic_write(path: str, write) -> None:
  """Writes `path` whole or not at all.

  Args:
    path: the file.
    write: called with a binary file object open on a temporary file beside `path`.

  Raises:
    WriteError: the write failed; any previous `path` is intact.
  """
  tmp = None
  try:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.chmod(tmp, umask_mode())
    os.replace(tmp, path)
  except BaseException as e:
    if tmp is not None and os.path.exists(tmp):
      os.unlink(tmp)
    if isinstance(e, OSError):
      raise write_failed(path, e) from None
    raise


def write_folder(path: str, fill) -> None:
  """Writes the folder `path` whole or not at all: `fill(tmp)` fills a folder beside it,
  which then replaces `path` (a previous `path` is put back if the swap fails).

  Args:
    path: the folder to write; its parent is created if missing.
    fill: called with the path of a temporary folder beside `path`, to fill it.

  Raises:
    WriteError: the write failed (an `OSError`); any previous folder at `path` is intact.
  """
  try:
    _write_folder(os.path.abspath(path), fill)
  except OSError as e:
    raise write_failed(path, e, "any previous folder there is intact") from None


def _write_folder(path: str, fill) -> None:
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
  try:
    os.chmod(tmp, umask_mode(0o777))
    fill(tmp)
    if os.path.exists(path):
      old = tempfile.mkdtemp(prefix=".old-", dir=parent)
      try:
        os.replace(path, os.path.join(old, "previous"))
        try:
          os.replace(tmp, path)
        except BaseException:
          os.replace(os.path.join(old, "previous"), path)
          raise
      finally:
        shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def write_text(path: str, text: str) -> None:
  """`text` (UTF-8) as the file `path`, atomically (`atomic_write`).

  Args:
    path: the file to write.
    text: its whole content, encoded as UTF-8.
  """
  atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str, obj: Any) -> None:
  """`obj` as indented JSON with sorted keys (NumPy scalars and arrays as numbers and lists).

  The file is written atomically (`write_text`) and ends with a newline.

  Args:
    path: the file to write.
    obj: a JSON-serialisable value; NumPy scalars and arrays are converted by `jsonable`.
  """
  write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=jsonable) + "\n")


def write_jsonl(path: str, records: Iterable[Mapping[str, Any]]) -> None:
  """`records` as JSON lines, one per record, atomically.

  Args:
    path: the file to write.
    records: the mappings to write, each as one line of JSON with sorted keys (NumPy scalars and
      arrays converted by `jsonable`).
  """
  write_text(path, "".join(json.dumps(r, sort_keys=True, default=jsonable) + "\n"
                           for r in records))


def jsonable(x):
  """A NumPy scalar or array as a JSON value (for `json.dumps(..., default=jsonable)`).

  Args:
    x: the object `json` could not serialise.

  Returns:
    A Python number for a NumPy floating or integer scalar; a (nested) list for a NumPy array.

  Raises:
    TypeError: `x` is neither a NumPy scalar nor a NumPy array.
  """
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f"cannot write {type(x).__name__} as JSON")
