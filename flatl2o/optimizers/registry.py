"""Optimizers by name: the registry (`register`), hand-designed ones as optax transformations.

`register(name, factory)` adds an optimizer; every built-in is added the same
way (the learned architectures at the end of their own modules), and so is a
user's:

  >>> @dataclasses.dataclass(frozen=True)
  ... class MyLOpt(flatl2o.optimizers.LearnedOptimizer):   # a learned architecture
  ...   name = "my_lopt"; coordinatewise = True; ...
  >>> flatl2o.optimizers.register("my_lopt", MyLOpt)
  >>> flatl2o.optimizers.register("signsgd", lambda learning_rate=0.01: optax.sign_sgd(...))

A class is a learned architecture (`learned(name, **hparams)`, `learned_names()`;
its exports load with `flatl2o.load_optimizer` once the module that registers it
is imported); any other callable is a hand-designed optimizer's factory
(`get(name, **hparams)`, `names()`). One namespace holds both; a name is
registered once (`overwrite=True` replaces it).

`get(name, **hparams)` returns an `optax.GradientTransformation`. The default
learning rates train every shipped optimizee: on 'digits' (1,000 steps, batch
128, seeds 0 and 1, 2 CPU cores) each one reached test accuracy 0.93-0.97 on
mlp_sigmoid, 0.95-0.96 on mlp_relu, 0.90-0.96 on mlp_deep and 0.975-0.986 on
conv (measured 2026-11-29 with `evaluation.train`; adam was best on the MLPs).

| name     | optax                                  | default learning_rate |
|----------|----------------------------------------|-----------------------|
| sgd      | `optax.sgd`                            | 0.3                   |
| momentum | `optax.sgd(momentum=0.9)`              | 0.03                  |
| adam     | `optax.adam`                           | 0.01                  |
| rmsprop  | `optax.rmsprop`                        | 0.003                 |
| adagrad  | `optax.adagrad`                        | 0.1                   |
| sam      | `optax.contrib.sam`, outer adam        | 0.03 (rho 0.05)       |
| entropy_sgd | `entropy_sgd.entropy_sgd` (needs `grad_fn=`) | 30 (gamma 0.03, L 20) |

SAM in optax's default (non-opaque) mode alternates an ascent step and a real
update, so `num_steps` calls of `update` make `num_steps / 2` parameter updates;
its outer Adam runs at 0.03 to make up for it: on digits mlp_sigmoid, 300 calls
reached test accuracy 0.946 +- 0.007 (seeds 1000-1004) against 0.927 at 0.01 and
Adam's 0.946 +- 0.006 at its default, and 0.03 trained mlp_relu, mlp_deep and
conv to 0.95-0.99 at 1,000 steps (measured 2026-12-01, 2 CPU cores).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from flatl2o import _checks
from flatl2o.optimizers import entropy_sgd as entropy_sgd_lib
from flatl2o.optimizers.base import LearnedOptimizer


class OptimizerError(ValueError):
  """An unknown optimizer name or hyper-parameter."""


def _sgd(learning_rate: float = 0.3):
  return optax.sgd(learning_rate)


def _momentum(learning_rate: float = 0.03, momentum: float = 0.9, nesterov: bool = False):
  return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


def _adam(learning_rate: float = 0.01, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8):
  return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def _rmsprop(learning_rate: float = 0.003, decay: float = 0.9, eps: float = 1e-8):
  return optax.rmsprop(learning_rate, decay=decay, eps=eps)


def _adagrad(learning_rate: float = 0.1, eps: float = 1e-7):
  return optax.adagrad(learning_rate, eps=eps)


def _entropy_sgd(learning_rate: float = 30.0, gamma: float = 0.03, scoping: float = 5e-4,
                 num_langevin_steps: int = 20, langevin_step_size: float = 0.1,
                 noise: float = 1e-4, mean_rate: float = 0.75, seed: int = 0):
  return entropy_sgd_lib.entropy_sgd(learning_rate, gamma, scoping, num_langevin_steps,
                                     langevin_step_size, noise, mean_rate, seed)


def _normalize() -> optax.GradientTransformation:
  """g / ||g|| (global norm), 0 for a zero gradient, each leaf in its own dtype.

  optax.contrib.normalize divides by the norm as it is: NaN on a zero gradient,
  and bf16 leaves promoted to float32.
  """
  def update(updates, state, params=None):
    del params
    norm = jnp.maximum(optax.global_norm(updates), 1e-30)
    return jax.tree.map(lambda g: (g / norm).astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _sam(learning_rate: float = 0.03, rho: float = 0.05):
  adversarial = optax.chain(_normalize(), optax.sgd(rho))
  return optax.contrib.sam(optax.adam(learning_rate), adversarial, sync_period=2)


# The registry: hand-designed factories and learned architectures, in registration order.
_FACTORIES: dict[str, Callable[..., optax.GradientTransformation]] = {}
LEARNED: dict[str, type[LearnedOptimizer]] = {}

# What a learned architecture class must have (the `LearnedOptimizer` protocol).
_PROTOCOL_MEMBERS = ("name", "coordinatewise", "preferred_meta_loss", "init", "init_state",
                     "step", "transform")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def register(name: str, factory: Callable[..., Any] | None = None, *, overwrite: bool = False):
  """Adds an optimizer to the registry under `name`; returns `factory`.

  Also a class decorator: `@register("my_lopt")` above the class definition.

  Args:
    name: letters, digits, '_', '.' or '-' (names become flags and folder names).
      Hand-designed and learned optimizers share one namespace.
    factory: either a learned-optimizer architecture, i.e. a class: a frozen
      dataclass following `LearnedOptimizer` (subclass it to inherit the
      defaults), whose `name` attribute equals `name` (exports record it and
      loading looks it up); it is then built by `learned(name, **hparams)`. Or
      a hand-designed optimizer: any other callable taking keyword
      hyper-parameters, each with a default, and returning an optax
      transformation; it is then built by `get(name, **hparams)`.
    overwrite: replace an optimizer already registered under `name`.

  Returns:
    `factory`, unchanged (without `factory`: a decorator that registers it).

  Raises:
    OptimizerError: a bad name, a name already registered (without
      `overwrite`), or a factory that does not fit.

  Example:

  >>> import optax, flatl2o
  >>> _ = flatl2o.optimizers.register(
  ...     "doc_signsgd", lambda learning_rate=0.01: optax.sign_sgd(learning_rate), overwrite=True)
  >>> flatl2o.optimizers.default_hparams("doc_signsgd")
  {'learning_rate': 0.01}
  """
  if factory is None:
    return lambda f: register(name, f, overwrite=overwrite)
  if not isinstance(name, str) or not _NAME.fullmatch(name):
    raise OptimizerError(f"cannot register optimizer name {name!r}: use letters, digits, "
                         "'_', '.' or '-'")
  if name in _FACTORIES or name in LEARNED:
    if not overwrite:
      kind = "a learned optimizer" if name in LEARNED else "a hand-designed optimizer"
      raise OptimizerError(f"optimizer {name!r} is already registered ({kind}); pick another "
                           "name, or pass overwrite=True to replace it")
  if isinstance(factory, type):
    _check_architecture(name, factory)
    _FACTORIES.pop(name, None)
    LEARNED[name] = factory
  elif callable(factory):
    _check_factory(name, factory)
    LEARNED.pop(name, None)
    _FACTORIES[name] = factory
  else:
    raise OptimizerError(f"cannot register {name!r}: {factory!r} is neither a learned-optimizer "
                         "class nor a callable returning an optax transformation")
  return factory


def _check_architecture(name: str, cls: type) -> None:
  where = f"cannot register learned optimizer {name!r}: class {cls.__name__}"
  if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:
    raise OptimizerError(f"{where} must be a frozen dataclass "
                         "(@dataclasses.dataclass(frozen=True)): exports record its fields")
  missing = [m for m in _PROTOCOL_MEMBERS if not hasattr(cls, m)]
  if missing:
    raise OptimizerError(f"{where} lacks {', '.join(missing)}; subclass "
                         "flatl2o.optimizers.LearnedOptimizer (it gives the defaults) and "
                         "define the rest")
  if cls.name != name:
    raise OptimizerError(f"{where} has name {cls.name!r}; exports record that name, so "
                         f"register it as {cls.name!r} or set name = {name!r}")


def _check_factory(name: str, factory: Callable[..., Any]) -> None:
  try:
    parameters = inspect.signature(factory).parameters.values()
  except (TypeError, ValueError):
    return  # a builtin without a signature: get() will tell
  required = [p.name for p in parameters if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
              or p.default is inspect.Parameter.empty]
  if required:
    raise OptimizerError(f"cannot register optimizer {name!r}: every parameter of its factory "
                         f"needs a default (get({name!r}) builds it with none); "
                         f"{required[0]!r} has none")


def names() -> tuple[str, ...]:
  """The registered hand-designed optimizers.

  Returns:
    Their names, in registration order (learned architectures are in `learned_names()`).
  """
  return tuple(_FACTORIES)


def default_hparams(name: str) -> dict[str, object]:
  """The hyper-parameters the hand-designed optimizer `name` accepts, with their defaults.

  Args:
    name: one of `names()`.

  Returns:
    Hyper-parameter name -> default value, read from the factory's signature.

  Raises:
    OptimizerError: `name` is not a registered hand-designed optimizer.
  """
  if name not in _FACTORIES:
    raise OptimizerError(f"unknown optimizer {name!r}{_checks.did_you_mean(name, names())}; "
                         f"accepted: {', '.join(names())}")
  return {p.name: p.default for p in inspect.signature(_FACTORIES[name]).parameters.values()}


def _check_known(what: str, given, accepted) -> None:
  unknown = sorted(set(given) - set(accepted))
  if unknown:
    raise OptimizerError(f"{what} takes no hyper-parameter {unknown[0]!r}"
                         f"{_checks.did_you_mean(unknown[0], accepted)}; "
                         f"accepted: {', '.join(accepted)}")


def get(name: str, **kwargs) -> optax.GradientTransformation:
  """Builds a hand-designed optimizer; `learning_rate=None` means its default.

  Args:
    name: one of `names()` (OptimizerError otherwise).
    **kwargs: hyper-parameters of the optimizer (see `default_hparams(name)`; an unknown one
      is an OptimizerError); a value of None means the default. `learning_rate` and `rho`,
      when given, must be positive numbers.

  Returns:
    The `optax.GradientTransformation` that the registered factory builds.
  """
  _check_known(f"optimizer {name!r}", kwargs, default_hparams(name))
  kwargs = {k: v for k, v in kwargs.items() if v is not None}
  for key in ("learning_rate", "rho"):
    if key in kwargs:
      _checks.positive_number(f"optimizer {name!r}: {key}", kwargs[key], OptimizerError)
  return _FACTORIES[name](**kwargs)


def learned_names() -> tuple[str, ...]:
  """The registered learned-optimizer architectures (built-ins first, in registration order).

  Returns:
    Their names, each accepted by `learned`.
  """
  return tuple(LEARNED)


def learned(name: str, **hparams) -> LearnedOptimizer:
  """A learned-optimizer architecture by name (`learned_names()`), untrained.

  Args:
    name: one of `learned_names()`.
    **hparams: values of the architecture's dataclass fields; the others keep their
      defaults.

  Returns:
    An instance of the registered architecture class (a `LearnedOptimizer`).

  Raises:
    OptimizerError: an unknown `name` or hyper-parameter, or values that the class
      rejects (a TypeError or ValueError from its constructor).
  """
  if name not in LEARNED:
    raise OptimizerError(f"unknown learned optimizer {name!r}"
                         f"{_checks.did_you_mean(name, LEARNED)}; accepted: {', '.join(LEARNED)}")
  _check_known(f"learned optimizer {name!r}", hparams,
               [f.name for f in dataclasses.fields(LEARNED[name])])
  try:
    return LEARNED[name](**hparams)
  except (TypeError, ValueError) as e:
    raise OptimizerError(str(e)) from None


register("sgd", _sgd)
register("momentum", _momentum)
register("adam", _adam)
register("rmsprop", _rmsprop)
register("adagrad", _adagrad)
register("sam", _sam)
register("entropy_sgd", _entropy_sgd)
