"""Hand-designed optimizers by name, as optax transformations.

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
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from flatl2o import _checks
from flatl2o.optimizers import entropy_sgd as entropy_sgd_lib
from flatl2o.optimizers.base import LearnedOptimizer
from flatl2o.optimizers.l2o_dm import L2ODM
from flatl2o.optimizers.l2o_scale import L2OScale
from flatl2o.optimizers.mlp_lopt import MLPLOpt
from flatl2o.optimizers.rnnprop import RNNProp


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


_FACTORIES: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": _sgd,
    "momentum": _momentum,
    "adam": _adam,
    "rmsprop": _rmsprop,
    "adagrad": _adagrad,
    "sam": _sam,
    "entropy_sgd": _entropy_sgd,
}


def names() -> tuple[str, ...]:
  return tuple(_FACTORIES)


def default_hparams(name: str) -> dict[str, object]:
  """The hyper-parameters the hand-designed optimizer `name` accepts, with their defaults."""
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
  """Builds a hand-designed optimizer; `learning_rate=None` means its default."""
  _check_known(f"optimizer {name!r}", kwargs, default_hparams(name))
  kwargs = {k: v for k, v in kwargs.items() if v is not None}
  for key in ("learning_rate", "rho"):
    if key in kwargs:
      _checks.positive_number(f"optimizer {name!r}: {key}", kwargs[key], OptimizerError)
  return _FACTORIES[name](**kwargs)


LEARNED: dict[str, type[LearnedOptimizer]] = {"l2o_dm": L2ODM, "rnnprop": RNNProp,
                                              "l2o_scale": L2OScale, "mlp_lopt": MLPLOpt}


def learned_names() -> tuple[str, ...]:
  return tuple(LEARNED)


def learned(name: str, **hparams) -> LearnedOptimizer:
  """A learned-optimizer architecture by name (`learned_names()`), untrained."""
  if name not in LEARNED:
    raise OptimizerError(f"unknown learned optimizer {name!r}"
                         f"{_checks.did_you_mean(name, LEARNED)}; accepted: {', '.join(LEARNED)}")
  _check_known(f"learned optimizer {name!r}", hparams,
               [f.name for f in dataclasses.fields(LEARNED[name])])
  try:
    return LEARNED[name](**hparams)
  except (TypeError, ValueError) as e:
    raise OptimizerError(str(e)) from None
