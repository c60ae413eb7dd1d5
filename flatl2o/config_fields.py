"""A configuration dataclass as flat fields, and the command line that builds it back.

`leaves(Config)` walks a (nested) frozen dataclass's fields as dotted paths
with their types and the descriptions of its docstring's `Attributes:`;
`command_args(config)` spells a configuration as the plain flags
(`--NAME=VALUE`) of a binary whose flags are derived from the dataclass
(`experiments/_config_flags.py` defines them from the same `leaves`), so the
library can write the command that reproduces a run without reading flags.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing


def field_docs(cls) -> dict[str, str]:
  """`field -> description` from the `Attributes:` section of a Google-style docstring.

  Args:
    cls: the class (or any object with a docstring) whose `Attributes:` section is read.

  Returns:
    Each attribute's name mapped to its description, continuation lines joined by single
    spaces; {} when there is no docstring or no `Attributes:` section.
  """
  doc = inspect.getdoc(cls) or ""
  match = re.search(r"^Attributes:\n(.*?)(?:\n\S|\Z)", doc, re.S | re.M)
  docs, name = {}, None
  for line in (match.group(1) if match else "").splitlines():
    entry = re.match(r"\s{2}(\w+): ?(.*)", line)
    if entry and not line.startswith("    "):
      name = entry.group(1)
      docs[name] = entry.group(2).strip()
    elif name is not None and line.strip():
      docs[name] += " " + line.strip()
  return docs


def unoptional(tp):
  """`T` for `T | None`, else `tp`.

  Args:
    tp: a type annotation (already resolved, not a string).

  Returns:
    `T` when `tp` is a union of exactly one type with None (`T | None`, `Optional[T]`);
    otherwise `tp` unchanged.
  """
  if typing.get_origin(tp) in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) == 1:
      return args[0]
  return tp


def leaves(cls, prefix: str = ""):
  """`(path, field, type, doc)` for every non-dataclass field, nested ones included.

  Args:
    cls: a dataclass type; fields whose type is itself a dataclass are walked recursively.
    prefix: prepended to every path (the dotted path of `cls` within an outer dataclass).

  Yields:
    `(path, field, type, doc)` in field order: the dotted path, the `dataclasses.Field`, its
    resolved type hint, and its `Attributes:` description (the field's name when it has none).
  """
  hints, docs = typing.get_type_hints(cls), field_docs(cls)
  for f in dataclasses.fields(cls):
    if dataclasses.is_dataclass(hints[f.name]):
      yield from leaves(hints[f.name], f"{prefix}{f.name}.")
    else:
      yield f"{prefix}{f.name}", f, hints[f.name], docs.get(f.name, f.name)


# The plain flags of experiments.meta_train that are not the leaf field's name.
META_TRAIN_RENAMES = {
    "regularizer.kind": "regularizer",
    "regularizer.when": "regularize_when",
    "regularizer.add_to_inner_loss": "regularize_inner_loss",
}


def _resolved_default(config, path: str):
  """The value `path` takes in `config` when its None default is left to __post_init__."""
  holder_path, _, name = path.rpartition(".")
  holders = [config]
  for part in filter(None, holder_path.split(".")):
    holders.append(getattr(holders[-1], part))
  value = dataclasses.replace(holders[-1], **{name: None})
  for holder, part in zip(reversed(holders[:-1]), reversed(holder_path.split(".")
                                                           if holder_path else [])):
    value = dataclasses.replace(holder, **{part: value})
  for part in path.split("."):
    value = getattr(value, part)
  return value


def _read_by_owner(config, path: str, owner: str | None) -> bool:
  """Whether the field at `path` is read by its record's `kind` (metadata "owner": a kind,
  or "any" kind but "none"); fields without an owner always are."""
  if owner is None:
    return True
  record = config
  for part in path.split(".")[:-1]:
    record = getattr(record, part)
  kind = getattr(record, "kind", None)
  return kind != "none" if owner == "any" else kind == owner


def command_args(config, *, renames: dict[str, str] | None = None) -> list[str]:
  """The plain flags (`--NAME=VALUE`) that `_config_flags.define` + `build` read back as `config`.

  Only fields that differ from the dataclass's defaults are listed, each under
  the flag name `define` gives it (a rename, else the leaf field's name). A
  field marked `metadata["resolved"]` whose None default __post_init__ resolves
  (curriculum_horizons) is listed only when it differs from that resolution.
  A field marked `metadata["flag"] = False` holds `(name, value)` pairs (a user's
  flatness term's own fields): each is listed as `--config.HOLDER.NAME=VALUE`.

  Args:
    config: a configuration dataclass instance.
    renames: field path -> flag name, as given to `_config_flags.define`.

  Returns:
    The flags, in field order.
  """
  renames = renames or {}
  args = []
  for path, field, tp, _ in leaves(type(config)):
    value = config
    for part in path.split("."):
      value = getattr(value, part)
    if field.metadata.get("flag") is False:  # a user's flatness term's own fields
      holder = path.rsplit(".", 1)[0]
      args.extend(f"--config.{holder}.{name}={v}" for name, v in value)
      continue
    # The declared default is the flag's: a field that __post_init__ resolves from others
    # (the regularizer's alpha) is listed whenever it differs from that.
    if value == field.default:
      continue
    if not _read_by_owner(config, path, field.metadata.get("owner")):
      continue  # a field of another regularizer kind: its flag would be refused
    if field.metadata.get("resolved") and value == _resolved_default(config, path):
      continue  # what the field's None resolves to here (curriculum_horizons)
    name = renames.get(path, path.rsplit(".", 1)[-1])
    if unoptional(tp) is bool:
      args.append(f"--{name}" if value else f"--no{name}")
    elif isinstance(value, tuple):
      args.append(f"--{name}={','.join(str(v) for v in value)}")
    else:
      args.append(f"--{name}={value!r}" if isinstance(value, float) else f"--{name}={value}")
  return args
