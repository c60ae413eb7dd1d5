"""Flatness terms of the meta-objective, as registered plug-ins.

A term is a small frozen dataclass: its fields are its settings (a coefficient
and whatever else it needs), checked in `__post_init__`, and calling it gives
its weighted contribution at one inner iterate,

    term(loss_fn, params, key) -> scalar

where `loss_fn(params)` is the inner training loss on the minibatch of that
step and `key` is fresh for each step and optimizee. The objective
(`flatl2o.meta.objective`, `flatl2o.meta.inner`) decides at which iterates a
term is evaluated and how it is averaged (the mean over the unroll, added to
the meta-loss); the term reaches the meta-parameters through `params`, which
depend on them through the learned optimizer's updates.

Two terms are built in (Yang et al., AISTATS 2023): `HessianTerm` ('hessian':
alpha times the per-coordinate Hessian trace or the top eigenvalue) and
`EntropyTerm` ('entropy': beta times the local-entropy surrogate from Langevin
chains). A researcher adds one with `register`:

>>> import dataclasses, jax, optax
>>> from flatl2o.meta import terms
>>> @terms.register("doc_grad_norm")
... @dataclasses.dataclass(frozen=True)
... class GradNorm:
...   coefficient: float = 0.1
...   def __call__(self, loss_fn, params, key):
...     grads = jax.grad(loss_fn)(params)
...     return self.coefficient * optax.tree_utils.tree_l2_norm(grads) ** 2
>>> "doc_grad_norm" in terms.names()
True
>>> term = terms.build("doc_grad_norm", {"coefficient": "0.5"})  # text, as from a flag
>>> round(float(term(lambda p: (p ** 2).sum(), jax.numpy.ones(2), None)), 4)  # 0.5 * |2p|^2
4.0

and then meta-trains with it as with a built-in: `MetaTrainConfig(regularizer=
GradNorm(0.5))`, or `python -m experiments.meta_train --import=my_terms
--regularizer=grad_norm --config.regularizer.coefficient=0.5`. Optional class
attributes and fields the framework reads:

- `coefficient_field` (class attribute, default 'coefficient'): the field a
  coefficient sweep scales and error messages name ('alpha', 'beta' here).
- `when` ('always', 'first_half', 'second_half') and `add_to_inner_loss`
  (bool): a term with these fields can be switched on for part of each episode
  or added to the loss whose gradient the learned optimizer sees
  (`--regularize_when`, `--regularize_inner_loss`); without them it is always
  on and only in the meta-objective.

This module imports no JAX (the binaries check a `--regularizer` before they
load it); the built-in terms import `flatl2o.flatness` when first called.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from typing import Any, Callable, Mapping

from flatl2o import _checks, builtin_names, config_fields

# The name under which the Langevin mean is saved by the rematerialised scan
# body of the unroll, so the backward pass does not run the chains a second time.
ENTROPY_MEAN = "flatl2o_entropy_mean"

HESSIAN_ESTIMATORS = ("trace", "eigenvalue", "lanczos")
WHEN = ("always", "first_half", "second_half")

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_REGISTRY: dict[str, type] = {}


class TermError(ValueError):
  """An unknown term, a bad registration, or a field a term does not have or accept."""


def _check_choice(name: str, value, accepted) -> None:
  if value not in accepted:
    raise ValueError(f"unknown regularizer {name} {value!r}; accepted: {', '.join(accepted)}")


def register(name: str, *, overwrite: bool = False) -> Callable[[type], type]:
  """A class decorator that adds a flatness term to the registry under `name`.

  Args:
    name: a letter, then letters, digits or '_' (it becomes `--regularizer=NAME`);
      not 'none'.
    overwrite: replace a term already registered under `name`.

  Returns:
    The decorator; it returns the class unchanged.

  Raises:
    TermError: a bad name, a name already registered (without `overwrite`), or a
      class that is not a frozen dataclass with a `__call__`.

  Example:

  >>> import dataclasses
  >>> from flatl2o.meta import terms
  >>> @terms.register("doc_zero")
  ... @dataclasses.dataclass(frozen=True)
  ... class Zero:
  ...   coefficient: float = 1.0
  ...   def __call__(self, loss_fn, params, key):
  ...     return 0.0 * loss_fn(params)
  >>> terms.get("doc_zero") is Zero
  True
  """
  if not isinstance(name, str) or not _NAME.fullmatch(name) or name == "none":
    raise TermError(f"cannot register flatness term name {name!r}: use a letter, then "
                    "letters, digits or '_' (and not 'none')")

  def decorate(cls: type) -> type:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)
            and cls.__dataclass_params__.frozen and callable(getattr(cls, "__call__", None))):
      raise TermError(f"cannot register flatness term {name!r}: {cls!r} is not a frozen "
                      "dataclass with __call__(loss_fn, params, key)")
    if name in _REGISTRY and not overwrite and _REGISTRY[name] is not cls:
      raise TermError(f"flatness term {name!r} is already registered (by "
                      f"{_REGISTRY[name].__module__}.{_REGISTRY[name].__qualname__}); pick "
                      "another name, or pass overwrite=True to replace it")
    _REGISTRY[name] = cls
    return cls

  return decorate


def names() -> tuple[str, ...]:
  """The registered flatness terms, built-ins first, in registration order.

  Returns:
    A tuple of names ('hessian', 'entropy', then a user's).
  """
  return tuple(_REGISTRY)


def _accepted() -> str:
  return (f"{', '.join(('none',) + names())} (a term of your own: register it with "
          "flatl2o.meta.terms.register and import its module, --import=MODULE)")


def get(name: str) -> type:
  """The class registered under `name`.

  Args:
    name: one of `names()`.

  Returns:
    The term's class.

  Raises:
    TermError: `name` is not registered (the message lists what is).
  """
  if name not in _REGISTRY:
    raise TermError(f"unknown regularizer kind {name!r}; accepted: {_accepted()}")
  return _REGISTRY[name]


def name_of(term: Any) -> str:
  """The registered name of `term` (an instance of a registered class).

  Args:
    term: a flatness term.

  Returns:
    The name it is registered under.

  Raises:
    TermError: its class is not registered.
  """
  for name, cls in _REGISTRY.items():
    if type(term) is cls:
      return name
  raise TermError(f"{type(term).__name__} is not a registered flatness term; register it "
                  "with @flatl2o.meta.terms.register(NAME)")


def coefficient_field(name: str) -> str:
  """The field of term `name` that a coefficient sweep scales ('alpha', 'beta', ...).

  Args:
    name: a registered term.

  Returns:
    The class attribute `coefficient_field`, default 'coefficient'.
  """
  return getattr(get(name), "coefficient_field", "coefficient")


def _parse(text: str, tp, where: str):
  """`text` (a command-line value) as the type `tp` of a term's field."""
  tp = config_fields.unoptional(tp)
  try:
    if tp is bool:
      if text.lower() in ("true", "1", "yes"):
        return True
      if text.lower() in ("false", "0", "no"):
        return False
      raise ValueError
    if tp in (int, float, str):
      return tp(text)
  except ValueError:
    raise TermError(f"{where} takes a {tp.__name__}, got {text!r}") from None
  raise TermError(f"{where}: a field of type {tp} cannot be set from the command line")


def build(name: str, values: Mapping[str, Any] | None = None) -> Any:
  """The term `name` with the fields `values` (command-line strings are converted).

  Args:
    name: a registered term.
    values: field -> value; a string is parsed as the field's annotated type
      (bool, int, float or str).

  Returns:
    The term instance (its `__post_init__` has checked it).

  Raises:
    TermError: an unknown term or field, or a value of the wrong type; a
      ValueError from the term's own checks passes through.
  """
  cls = get(name)
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for field, value in (values or {}).items():
    if field not in fields:
      raise TermError(f"flatness term {name!r} has no field {field!r}; accepted: "
                      f"{', '.join(fields) or '(none)'}")
    if isinstance(value, str) and hints.get(field, str) is not str:
      value = _parse(value, hints[field], f"--config.regularizer.{field}")
    kwargs[field] = value
  try:
    return cls(**kwargs)
  except TypeError as e:
    raise TermError(f"flatness term {name!r}: {e}") from None


def fields_of(term: Any) -> dict[str, Any]:
  """The fields of `term` that differ from its class's defaults.

  Args:
    term: a flatness term.

  Returns:
    field -> value, in declaration order; `build(name_of(term), fields_of(term))`
    equals `term`.
  """
  out = {}
  for f in dataclasses.fields(term):
    value = getattr(term, f.name)
    default = (f.default if f.default is not dataclasses.MISSING else
               f.default_factory() if f.default_factory is not dataclasses.MISSING else
               dataclasses.MISSING)
    if value != default:
      out[f.name] = value
  return out


@register("hessian")
@dataclasses.dataclass(frozen=True)
class HessianTerm:
  """`alpha * R_hessian(x_t)`: the curvature of the inner loss at an iterate.

  R_hessian is tr(H)/n by Hutchinson (`probes` Rademacher probes), the mean
  curvature per coordinate, so alpha means the same for any model size; or the
  top eigenvalue by power iteration or Lanczos (`power_iters` Hessian-vector
  products), which does not grow with n.

  Attributes:
    alpha: the coefficient.
    estimator: 'trace' (Hutchinson, divided by the number of coordinates),
      'eigenvalue' (power iteration) or 'lanczos' (top Ritz value).
    probes: Rademacher probes per trace estimate.
    power_iters: Hessian-vector products per eigenvalue estimate.
    when: 'always', 'first_half' or 'second_half' of each episode.
    add_to_inner_loss: also regularize the loss the learned optimizer sees.
  """

  coefficient_field = "alpha"

  alpha: float = 1.0
  estimator: str = "trace"
  probes: int = 4
  power_iters: int = 10
  when: str = "always"
  add_to_inner_loss: bool = False

  def __post_init__(self):
    _check_choice("estimator", self.estimator, HESSIAN_ESTIMATORS)
    _check_choice("when", self.when, WHEN)
    _checks.positive_number("alpha", self.alpha)
    _checks.positive_int("probes", self.probes)
    _checks.positive_int("power_iters", self.power_iters)

  def __call__(self, loss_fn, params, key):
    """alpha * R_hessian(params) for the minibatch loss `loss_fn`.

    Args:
      loss_fn: params -> scalar, the inner loss on this step's minibatch.
      params: the optimizee's parameters at this iterate.
      key: PRNG key for the probes or the power iteration's start.

    Returns:
      A scalar.
    """
    # pylint: disable=g-import-not-at-top  (both import JAX; see the module docstring)
    from flatl2o import flatness
    from flatl2o.optimizers import base
    if self.estimator == "trace":
      value = (flatness.hessian_trace(loss_fn, params, key, self.probes)
               / base.num_coordinates(params))
    elif self.estimator == "eigenvalue":
      value = flatness.top_hessian_eigenvalue(loss_fn, params, key, self.power_iters)
    else:
      value = flatness.lanczos_top_eigenvalue(loss_fn, params, key, self.power_iters)
    return self.alpha * value


@register("entropy")
@dataclasses.dataclass(frozen=True)
class EntropyTerm:
  """`beta * R_entropy(x_t)`: the local-entropy surrogate from Langevin chains.

  R_entropy is gamma/2 ||x_t - sg(mu_t)||^2 with mu_t the mean of K Langevin
  chains of L steps; its gradient w.r.t. x_t is the local-entropy gradient
  gamma (x_t - mu_t), on the scale of the loss gradient (mu is held constant,
  as Entropy-SGD treats its Langevin estimate; Chaudhari et al., ICLR 2017).

  Attributes:
    beta: the coefficient.
    gamma: the inverse width of the local region.
    chains: K, Langevin chains (vmapped).
    steps: L, Langevin steps per chain.
    step_size: Langevin step size.
    noise: Langevin noise scale (1 samples the local Gibbs measure).
    when: 'always', 'first_half' or 'second_half' of each episode.
    add_to_inner_loss: also regularize the loss the learned optimizer sees.
  """

  coefficient_field = "beta"

  beta: float = 1.0
  gamma: float = 1.0
  chains: int = 4
  steps: int = 5
  step_size: float = 0.1
  noise: float = 0.01
  when: str = "always"
  add_to_inner_loss: bool = False

  def __post_init__(self):
    _check_choice("when", self.when, WHEN)
    for name in ("beta", "gamma", "step_size"):
      _checks.positive_number(name, getattr(self, name))
    _checks.positive_int("chains", self.chains)
    _checks.positive_int("steps", self.steps)
    if not isinstance(self.noise, (int, float)) or not 0 <= self.noise < math.inf:
      raise ValueError(f"noise must be a non-negative number, got {self.noise!r}")

  def __call__(self, loss_fn, params, key):
    """beta * R_entropy(params) for the minibatch loss `loss_fn`.

    Args:
      loss_fn: params -> scalar, the inner loss on this step's minibatch.
      params: the optimizee's parameters at this iterate.
      key: PRNG key for the Langevin chains.

    Returns:
      A scalar.
    """
    import jax  # pylint: disable=g-import-not-at-top  (see the module docstring)
    from jax.ad_checkpoint import checkpoint_name  # pylint: disable=g-import-not-at-top
    from flatl2o import flatness  # pylint: disable=g-import-not-at-top
    mu = flatness.langevin_mean(
        loss_fn, params, key, gamma=self.gamma, num_chains=self.chains,
        num_steps=self.steps, step_size=self.step_size, noise=self.noise)
    mu = checkpoint_name(jax.lax.stop_gradient(mu), ENTROPY_MEAN)
    return self.beta * flatness.local_entropy_surrogate(params, mu, self.gamma)


BUILTIN = builtin_names.TERMS  # registered above, in this order (tests/test_fast_failure.py)
