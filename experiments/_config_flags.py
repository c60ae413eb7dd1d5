"""Command-line flags derived from a configuration dataclass: one source of truth.

`define(Config, renames=...)` defines, from the dataclass fields alone,
- `--config`: an `ml_collections.config_flags.DEFINE_config_dataclass` flag, so
  any field can be set as `--config.field=value` (nested ones as
  `--config.regularizer.alpha=0.01`), as Flax's own example binaries do;
- one plain flag per leaf field (`--unroll_length`, `--alpha`, ...), typed from
  its annotation, with its default, its help text taken from the dataclass
  docstring's `Attributes:` section, and its accepted values from the field's
  `metadata["choices"]`. `renames` maps a nested field path to another flag
  name (`{"regularizer.kind": "regularizer"}`).

`build(handle)` returns the frozen dataclass with both kinds of flags applied
(`__post_init__` checks it), and the set of field paths the command line set.
Giving one field both ways is an error.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import types
import typing
from typing import Any

from absl import flags
from ml_collections import config_flags


def field_docs(cls) -> dict[str, str]:
  """`field -> description` from the `Attributes:` section of a Google-style docstring."""
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


def _unoptional(tp):
  """`T` for `T | None`, else `tp`."""
  if typing.get_origin(tp) in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) == 1:
      return args[0]
  return tp


def _mutable_twin(cls):
  """A non-frozen copy of a (nested) frozen dataclass type, for ml_collections to set."""
  hints = typing.get_type_hints(cls)
  fields = []
  for f in dataclasses.fields(cls):
    tp = hints[f.name]
    if dataclasses.is_dataclass(tp):
      twin = _mutable_twin(tp)
      fields.append((f.name, twin, dataclasses.field(default_factory=twin)))
    else:
      fields.append((f.name, tp, dataclasses.field(default=f.default)))
  return dataclasses.make_dataclass(cls.__name__, fields)


def _leaves(cls, prefix: str = ""):
  """`(path, field, type, doc)` for every non-dataclass field, nested ones included."""
  hints, docs = typing.get_type_hints(cls), field_docs(cls)
  for f in dataclasses.fields(cls):
    if dataclasses.is_dataclass(hints[f.name]):
      yield from _leaves(hints[f.name], f"{prefix}{f.name}.")
    else:
      yield f"{prefix}{f.name}", f, hints[f.name], docs.get(f.name, f.name)


@dataclasses.dataclass(frozen=True)
class ConfigFlags:
  """What `define` made: the dataclass, the `--config` holder, and path -> flag name."""

  cls: type
  config: flags.FlagHolder
  flag_names: dict[str, str]


def define(cls, *, renames: dict[str, str] | None = None,
           flag_values: flags.FlagValues = flags.FLAGS,
           argv: list[str] | None = None) -> ConfigFlags:
  """Defines `--config` and one plain flag per leaf field of the dataclass `cls`.

  `argv` (default `sys.argv`) is where ml_collections looks for the
  `--config.PATH` overrides it must define.
  """
  argv = sys.argv if argv is None else argv
  renames = renames or {}
  flag_names = {}
  for path, field, tp, doc in _leaves(cls):
    name = renames.get(path, path.rsplit(".", 1)[-1])
    tp, default = _unoptional(tp), field.default
    help_text = f"{doc} (also --config.{path})"
    choices = field.metadata.get("choices")
    if choices:
      flags.DEFINE_enum(name, default, choices, help_text, flag_values=flag_values)
    elif tp is bool:
      flags.DEFINE_bool(name, default, help_text, flag_values=flag_values)
    elif tp is int:
      flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
    elif tp is float:
      flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
    elif tp is str:
      flags.DEFINE_string(name, default, help_text, flag_values=flag_values)
    elif tp == tuple[int, ...]:
      flags.DEFINE_list(name, [str(v) for v in default], help_text + "; comma-separated",
                        flag_values=flag_values)
    else:
      raise TypeError(f"{cls.__name__}.{path}: no flag type for {tp}")
    flag_names[path] = name
  _check_config_overrides(argv[1:], flag_names)
  twin = _mutable_twin(cls)
  holder = config_flags.DEFINE_config_dataclass(
      "config", twin(), f"{cls.__name__} (set fields as --config.FIELD=VALUE).",
      flag_values=flag_values, sys_argv=argv)
  return ConfigFlags(cls, holder, flag_names)


# The plain flags of experiments.meta_train that are not the leaf field's name.
META_TRAIN_RENAMES = {
    "regularizer.kind": "regularizer",
    "regularizer.when": "regularize_when",
    "regularizer.add_to_inner_loss": "regularize_inner_loss",
}


def command_args(config, *, renames: dict[str, str] | None = None) -> list[str]:
  """The plain flags (`--NAME=VALUE`) that `define` + `build` turn back into `config`.

  Only fields that differ from the dataclass's defaults are listed, each under
  the flag name `define` gives it (a rename, else the leaf field's name).
  """
  renames = renames or {}
  args = []
  for path, field, tp, _ in _leaves(type(config)):
    value = config
    for part in path.split("."):
      value = getattr(value, part)
    # The declared default is the flag's: a field that __post_init__ resolves from others
    # (the regularizer's alpha) is listed whenever it differs from that.
    if value == field.default:
      continue
    name = renames.get(path, path.rsplit(".", 1)[-1])
    if _unoptional(tp) is bool:
      args.append(f"--{name}" if value else f"--no{name}")
    elif isinstance(value, tuple):
      args.append(f"--{name}={','.join(str(v) for v in value)}")
    else:
      args.append(f"--{name}={value!r}" if isinstance(value, float) else f"--{name}={value}")
  return args


def _check_config_overrides(argv: list[str], flag_names: dict[str, str]) -> None:
  """Unknown `--config.PATH` fields: one line and exit 2 (ml_collections would raise a
  KeyError while the binary is still being imported)."""
  for arg in argv:
    match = re.match(r"--(?:no)?config\.([^=\s]+)", arg)
    if match and match.group(1) not in flag_names:
      from experiments import _cli  # pylint: disable=g-import-not-at-top
      _cli.fail(f"unknown configuration field --config.{match.group(1)}; accepted: "
                f"{', '.join(flag_names)}")


def _overridden(holder: flags.FlagHolder) -> set[str]:
  return set(config_flags.get_override_values(holder._flagvalues[holder.name]))  # pylint: disable=protected-access


def _freeze(cls, twin_value) -> Any:
  """The frozen `cls` with the values of its mutable twin (nested included)."""
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for f in dataclasses.fields(cls):
    value = getattr(twin_value, f.name)
    kwargs[f.name] = _freeze(hints[f.name], value) if dataclasses.is_dataclass(
        hints[f.name]) else value
  return cls(**kwargs)


def build(made: ConfigFlags, flag_values: flags.FlagValues = flags.FLAGS) -> tuple[Any, set[str]]:
  """The configuration from the command line, and the field paths it set.

  Raises:
    ValueError: a field set both as `--NAME` and `--config.PATH`, or a value
      the dataclass rejects.
  """
  twin_value = made.config.value
  from_config = _overridden(made.config)
  given = set(from_config)
  for path, name in made.flag_names.items():
    if not flag_values[name].present:
      continue
    if path in from_config:
      raise ValueError(f"--{name} and --config.{path} set the same field; give one")
    holder, _, leaf = path.rpartition(".")
    target = twin_value
    for part in filter(None, holder.split(".")):
      target = getattr(target, part)
    value = flag_values[name].value
    if isinstance(value, list):  # a tuple[int, ...] field, given as a comma-separated list
      try:
        value = tuple(int(v) for v in value)
      except ValueError:
        raise ValueError(f"--{name} takes comma-separated integers, got "
                         f"{','.join(flag_values[name].value)!r}") from None
    setattr(target, leaf, value)
    given.add(path)
  return _freeze(made.cls, twin_value), given
