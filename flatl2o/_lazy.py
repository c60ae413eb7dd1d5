"""Attributes of a package imported on first use (PEP 562).

`import flatl2o` (and `flatl2o.meta`, `flatl2o.study`) stays light, so the
binaries check their flags before anything imports JAX.

  __getattr__, __dir__ = _lazy.attach(__name__, modules=("trainer",),
                                      names={"meta_train": "trainer"}, public=__all__)
"""

from __future__ import annotations

import importlib
from typing import Callable, Iterable


def attach(package: str, modules: Iterable[str], names: dict[str, str],
           public: Iterable[str]) -> tuple[Callable, Callable]:
  """`(__getattr__, __dir__)` for `package`: its submodules `modules`, and each of
  `names` taken from the submodule it maps to, imported when first asked for."""
  modules, public = frozenset(modules), tuple(public)

  def __getattr__(name):  # pylint: disable=invalid-name
    if name in modules:
      return importlib.import_module(f"{package}.{name}")
    if name in names:
      return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
    raise AttributeError(f"module {package!r} has no attribute {name!r}")

  def __dir__():  # pylint: disable=invalid-name
    return sorted(set(importlib.import_module(package).__dict__) | set(public))

  return __getattr__, __dir__
