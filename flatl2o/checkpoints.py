"""The export format of a learned optimizer: `save_optimizer`, `load_optimizer`.

An exported optimizer is a folder with
  optimizer.json     format, architecture name, hyper-parameters, array shapes,
                     and the SHA-256 of the array file
  meta_params.npz    the meta-parameters, one array per pytree path
Loading checks all of it and returns a ready optax transformation; nothing else
is needed from the user but, for an architecture defined outside flatl2o, to
import the module that registers it (`flatl2o.optimizers.register`) first. Both are written to a temporary folder and renamed
into place, so a crash never leaves a half-written export. (A meta-training
run's resumable state lives in its run directory: `flatl2o.meta.run_dir`.)

Example:
  >>> flatl2o.save_optimizer("my_optimizer", lopt, meta_params)
  >>> tx = flatl2o.load_optimizer("my_optimizer")   # an optax transformation
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
from typing import Any

import jax
import numpy as np
import optax

from flatl2o import atomic_files
from flatl2o.optimizers import base as lopt_base
from flatl2o.optimizers import registry

FORMAT = "flatl2o-optimizer"
FORMAT_VERSION = 1
_META_FILE = "optimizer.json"
_ARRAYS_FILE = "meta_params.npz"
# Every file of an export (flatl2o.pretrained copies exactly these).
EXPORT_FILES = (_META_FILE, _ARRAYS_FILE)


class CheckpointError(ValueError):
  """A missing, corrupted or mismatched checkpoint or export."""


def _leaves_by_path(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


# What `status` in an export's metadata can say; an export without it is "trained".
STATUSES = ("trained", "collapsed", "undertrained")


def save_optimizer(path: str, lopt, meta_params, metadata: dict[str, Any] | None = None) -> None:
  """Exports a learned optimizer (architecture, hyper-parameters, meta-parameters).

  Args:
    path: the export's folder (created, or an earlier export replaced).
    lopt: the learned-optimizer architecture.
    meta_params: its meta-parameters.
    metadata: optional JSON-able facts kept in optimizer.json under "metadata"
      (meta-training writes {"status": "collapsed" | "undertrained", ...} for an
      optimizer that never lowered the validation training loss; `status` reads it).
  """
  if metadata is not None and metadata.get("status", "trained") not in STATUSES:
    raise ValueError(f"unknown export status {metadata['status']!r}; accepted: "
                     f"{', '.join(STATUSES)}")
  arrays = _leaves_by_path(meta_params)
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  payload = buffer.getvalue()
  meta = {
      "format": FORMAT,
      "version": FORMAT_VERSION,
      "architecture": lopt.name,
      "hparams": lopt_base.architecture_hparams(lopt),
      "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
      "sha256": hashlib.sha256(payload).hexdigest(),
      "written_by": f"flatl2o {_package_version()}",
  }
  if metadata is not None:  # absent otherwise: an export's bytes stay what they were
    meta["metadata"] = metadata
  path = os.path.abspath(path)
  if os.path.exists(path) and not os.path.isfile(os.path.join(path, _META_FILE)):
    raise CheckpointError(f"{path} exists and is not an exported optimizer; "
                          "choose another path (nothing was written)")
  def fill(folder):
    with open(os.path.join(folder, _ARRAYS_FILE), "wb") as f:
      f.write(payload)
    with open(os.path.join(folder, _META_FILE), "w") as f:
      json.dump(meta, f, indent=2, sort_keys=True)

  atomic_files.write_folder(path, fill)


def load_learned(path: str):
  """Returns `(lopt, meta_params)` of an exported optimizer, fully checked.

  Args:
    path: the export's folder, as written by `save_optimizer` (e.g. RUN_DIR/optimizer).

  Returns:
    `(lopt, meta_params)`: the learned-optimizer architecture rebuilt from its registered name
    and hyper-parameters, and its meta-parameters as a pytree of JAX arrays shaped like
    `lopt.init`'s.

  Raises:
    CheckpointError: `path` is missing or not an export; optimizer.json is corrupted, of another
      format or version, or names an unregistered architecture or bad hyper-parameters;
      meta_params.npz is unreadable or fails its SHA-256 check; or its arrays do not match the
      architecture's meta-parameters (names or shapes).
  """
  meta_path = os.path.join(path, _META_FILE)
  if not os.path.exists(path):
    raise CheckpointError(f"{path} does not exist; pass the folder written by save_optimizer, "
                          "e.g. RUN_DIR/optimizer")
  if not os.path.isfile(meta_path):
    raise CheckpointError(f"{path} is not an exported optimizer (no {_META_FILE}); pass the "
                          "folder written by save_optimizer, e.g. RUN_DIR/optimizer")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{meta_path} is corrupted ({e}); export the optimizer again") from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise CheckpointError(f"{meta_path} is not a flatl2o optimizer description")
  writer = meta.get("written_by", "an older flatl2o")
  version = meta.get("version")
  if version != FORMAT_VERSION:
    newer = isinstance(version, int) and version > FORMAT_VERSION
    raise CheckpointError(
        f"{meta_path} has format version {version!r} (written by {writer}); this flatl2o "
        f"{_package_version()} reads version {FORMAT_VERSION}"
        + ("; upgrade flatl2o to load it" if newer else ""))
  architecture = meta.get("architecture")
  if architecture not in registry.learned_names():
    raise CheckpointError(
        f"{meta_path} holds architecture {architecture!r} (written by {writer}), which is not "
        f"registered (registered: {', '.join(registry.learned_names())}); import the module "
        f"that calls flatl2o.optimizers.register({architecture!r}, ...) first, or upgrade "
        "flatl2o if it is a newer built-in")
  try:
    lopt = registry.learned(meta["architecture"], **_tuples(meta["hparams"]))
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f"{meta_path}: bad architecture or hyper-parameters: {e}") from None

  arrays_path = os.path.join(path, _ARRAYS_FILE)
  try:
    with open(arrays_path, "rb") as f:
      payload = f.read()
  except OSError as e:
    raise CheckpointError(f"cannot read {arrays_path}: {e}") from None
  if hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
    raise CheckpointError(f"{arrays_path} is corrupted or truncated (checksum mismatch); "
                          "export the optimizer again")
  with np.load(io.BytesIO(payload)) as npz:
    arrays = {k: npz[k] for k in npz.files}

  # Shapes only: tracing init is instant, running it eagerly compiles every random draw.
  template = jax.eval_shape(lopt.init, jax.random.key(0))
  expected = {jax.tree_util.keystr(p): v
              for p, v in jax.tree_util.tree_flatten_with_path(template)[0]}
  if set(arrays) != set(expected):
    raise CheckpointError(f"{path}: meta-parameters do not match architecture "
                          f"{lopt.name} with {lopt_base.architecture_hparams(lopt)}")
  for k, v in expected.items():
    if arrays[k].shape != v.shape:
      raise CheckpointError(f"{path}: meta-parameter {k} has shape {arrays[k].shape}, "
                            f"architecture {lopt.name} expects {v.shape}")
  leaves = [arrays[jax.tree_util.keystr(p)]
            for p, _ in jax.tree_util.tree_flatten_with_path(template)[0]]
  meta_params = jax.tree.unflatten(jax.tree.structure(template), [jax.numpy.asarray(a)
                                                                 for a in leaves])
  return lopt, meta_params


def metadata(path: str) -> dict[str, Any]:
  """The "metadata" of an export's optimizer.json ({} when it has none, as older ones).

  Args:
    path: the export's folder.

  Returns:
    The "metadata" dict; {} also when optimizer.json is missing or unreadable or its
    "metadata" is not a dict (`load_learned` reports what is wrong with it).
  """
  try:
    with open(os.path.join(path, _META_FILE)) as f:
      value = json.load(f).get("metadata", {})
  except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
    return {}  # load_learned reports what is wrong with it
  return value if isinstance(value, dict) else {}


def status(path: str) -> str:
  """"trained", or "collapsed" / "undertrained" for an export marked so at meta-training.

  Args:
    path: the export's folder.

  Returns:
    The "status" of its metadata, one of `STATUSES`; "trained" when it has none or an unknown
    one.
  """
  value = metadata(path).get("status", "trained")
  return value if value in STATUSES else "trained"


def status_warning(path: str) -> str | None:
  """One line warning about an export marked collapsed or undertrained, else None.

  Args:
    path: the export's folder (also named in the warning).

  Returns:
    The warning line for a "collapsed" or "undertrained" `status`; None for a trained one.
  """
  value = status(path)
  if value == "collapsed":
    return (f"warning: {path} is marked collapsed: at every validation of its meta-training "
            "it no longer lowered the training loss (its flatness term taught it to stand "
            "still)")
  if value == "undertrained":
    return (f"warning: {path} is marked undertrained: its meta-training ended before it "
            "lowered the training loss at any validation")
  return None


def load_optimizer(path: str) -> optax.GradientTransformationExtraArgs:
  """Loads an exported learned optimizer as a ready optax transformation.

  Args:
    path: the export's folder, as written by `save_optimizer`; checked as `load_learned` does
      (which raises `CheckpointError` for a bad export).

  Returns:
    `lopt.transform(meta_params)`: an `optax.GradientTransformationExtraArgs` applying the
    learned optimizer with its exported meta-parameters.

  Example:

  >>> import os, tempfile, jax, jax.numpy as jnp, flatl2o
  >>> lopt = flatl2o.optimizers.L2ODM()
  >>> path = os.path.join(tempfile.mkdtemp(), "my_optimizer")
  >>> flatl2o.save_optimizer(path, lopt, lopt.init(jax.random.key(0)))
  >>> tx = flatl2o.load_optimizer(path)
  >>> params = {"w": jnp.ones(3)}
  >>> updates, state = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
  >>> updates["w"].shape
  (3,)
  """
  lopt, meta_params = load_learned(path)
  return lopt.transform(meta_params)


def _package_version() -> str:
  try:
    return importlib.metadata.version("flatl2o")
  except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
    return "(uninstalled)"


def _tuples(hparams: dict) -> dict:
  return {k: tuple(v) if isinstance(v, list) else v for k, v in hparams.items()}
