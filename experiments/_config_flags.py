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
import re
import sys
import typing
from typing import Any

from absl import flags
from ml_collections import config_flags

# The field walk and the flag spelling live in the library (flatl2o.study writes
# meta_train command lines with them); the names stay importable from here.
from flatl2o.config_fields import META_TRAIN_RENAMES, command_args, field_docs  # pylint: disable=unused-import
from flatl2o.config_fields import leaves as _leaves
from flatl2o.config_fields import unoptional as _unoptional


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


@dataclasses.dataclass(frozen=True)
class ConfigFlags:
  """What `define` made: the dataclass, the `--config` holder, and path -> flag name."""

  cls: type
  config: flags.FlagHolder
  flag_names: dict[str, str]
  # `--config.PREFIX.FIELD=VALUE` of a field the dataclass does not have, under an
  # `open_prefix` (a user's flatness term's own fields): field -> the text given.
  open_args: dict[str, str] = dataclasses.field(default_factory=dict)


def define(cls, *, renames: dict[str, str] | None = None,
           flag_values: flags.FlagValues = flags.FLAGS,
           argv: list[str] | None = None, open_prefix: str | None = None) -> ConfigFlags:
  """Defines `--config` and one plain flag per leaf field of the dataclass `cls`.

  Args:
    cls: a frozen (possibly nested) configuration dataclass.
    renames: field path -> flag name, where the flag is not the leaf's name.
    flag_values: where the flags are defined.
    argv: where ml_collections looks for the `--config.PATH` overrides it must
      define (default `sys.argv`).
    open_prefix: a nested record (e.g. 'regularizer') whose `--config.PREFIX.FIELD=VALUE`
      arguments may name fields it does not declare (a user's flatness term's): they are
      taken out of `argv` (absl never sees them) into `ConfigFlags.open_args`.

  Returns:
    The `ConfigFlags` that `build` reads.
  """
  argv = sys.argv if argv is None else argv
  renames = renames or {}
  flag_names = {}
  for path, field, tp, doc in _leaves(cls):
    if field.metadata.get("flag") is False:
      continue  # set another way (a term's own fields: open_prefix)
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
      flags.DEFINE_list(name, None if default is None else [str(v) for v in default],
                        help_text + "; comma-separated", flag_values=flag_values)
    else:
      raise TypeError(f"{cls.__name__}.{path}: no flag type for {tp}")
    flag_names[path] = name
  open_args = _take_open_args(argv, flag_names, open_prefix) if open_prefix else {}
  _check_config_overrides(argv[1:], flag_names)
  twin = _mutable_twin(cls)
  holder = config_flags.DEFINE_config_dataclass(
      "config", twin(), f"{cls.__name__} (set fields as --config.FIELD=VALUE).",
      flag_values=flag_values, sys_argv=argv)
  return ConfigFlags(cls, holder, flag_names, open_args)


def _take_open_args(argv: list[str], flag_names: dict[str, str], prefix: str) -> dict[str, str]:
  """Removes `--config.PREFIX.FIELD=VALUE` of undeclared FIELDs from `argv`; returns them."""
  taken, kept = {}, [argv[0]] if argv else []
  for arg in argv[1:]:
    match = re.fullmatch(rf"--config\.{re.escape(prefix)}\.([A-Za-z_]\w*)=(.*)", arg, re.S)
    if match and f"{prefix}.{match.group(1)}" not in flag_names:
      taken[match.group(1)] = match.group(2)
    else:
      kept.append(arg)
  argv[:] = kept
  return taken


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
