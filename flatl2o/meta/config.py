"""Configuration of meta-training, checked before anything compiles."""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any

from flatl2o import _checks
from flatl2o.meta import terms
from flatl2o.meta.terms import HESSIAN_ESTIMATORS, WHEN, EntropyTerm, HessianTerm

META_LOSSES = ("mean", "log_ratio")
ESTIMATORS = ("truncated", "pes", "es")
KINDS = ("none",) + terms.BUILTIN  # the built-in kinds; `terms.names()` adds a user's

# The built-in flatness terms live in `flatl2o.meta.terms` (with a user's, registered there).
FlatnessTerm = HessianTerm | EntropyTerm  # the built-ins; any registered term is accepted
_TERMS = {"hessian": HessianTerm, "entropy": EntropyTerm}


def _owned(owner: str, default, term_field: str | None = None):
  """A `RegularizerConfig` field that belongs to one kind of term ('any': to both),
  spelled `term_field` in that term (default: the same name)."""
  return dataclasses.field(default=default, metadata={"owner": owner,
                                                      "term_field": term_field})


@dataclasses.dataclass(frozen=True)
class RegularizerConfig:
  """Which flatness term the meta-objective adds, as one flat record of settings.

  This is how the flags spell a term (`--regularizer=hessian --alpha=...`); the
  compiled steps see only `term()`, the term object itself (`flatl2o.meta.terms`)
  or None, which carries the settings of its own kind and nothing else. Each
  built-in field's metadata names the kind that owns it (`owner`). A term of
  your own (registered with `flatl2o.meta.terms.register`) is `kind=NAME` with
  its fields in `term_fields` (`--config.regularizer.FIELD=VALUE` on the command
  line). `MetaTrainConfig` also takes a term object directly
  (`RegularizerConfig.of`).

  Attributes:
    kind: 'none', 'hessian', 'entropy', or the name of a registered term (a
      term of your own: `flatl2o.meta.terms.register`, and --import its module).
    hessian_estimator: 'trace' (Hutchinson, divided by the number of
      coordinates), 'eigenvalue' (power iteration) or 'lanczos' (top Ritz value).
    alpha: coefficient of the Hessian term; None picks the estimator's default,
      1.0 for the per-coordinate trace and 0.01 for an eigenvalue (an
      eigenvalue is ~100x the mean curvature here, and alpha = 1 on it made
      L2O-DM collapse on the digits MLP within 20 meta-steps).
    hessian_probes: Rademacher probes per trace estimate (one probe is mostly
      noise in the meta-gradient; docs/science.md).
    power_iters: Hessian-vector products per eigenvalue estimate.
    beta: coefficient of the entropy term.
    entropy_gamma: gamma, the inverse width of the local region.
    entropy_chains: K, Langevin chains (vmapped).
    entropy_steps: L, Langevin steps per chain.
    entropy_step_size: Langevin step size.
    entropy_noise: Langevin noise scale (1 samples the local Gibbs measure).
    when: 'always', 'first_half' or 'second_half' of each episode.
    add_to_inner_loss: also regularize the loss the learned optimizer sees.
    term_fields: `(field, value)` pairs of a registered term of your own (not
      of 'hessian' or 'entropy', whose settings are the fields above); the
      fields left out take the term's defaults.
  """

  kind: str = "none"
  hessian_estimator: str = dataclasses.field(
      default="trace", metadata={"choices": HESSIAN_ESTIMATORS, "owner": "hessian",
                                 "term_field": "estimator"})
  alpha: float | None = _owned("hessian", None)
  hessian_probes: int = _owned("hessian", 4, "probes")
  power_iters: int = _owned("hessian", 10)
  beta: float = _owned("entropy", 1.0)
  entropy_gamma: float = _owned("entropy", 1.0, "gamma")
  entropy_chains: int = _owned("entropy", 4, "chains")
  entropy_steps: int = _owned("entropy", 5, "steps")
  entropy_step_size: float = _owned("entropy", 0.1, "step_size")
  entropy_noise: float = _owned("entropy", 0.01, "noise")
  when: str = dataclasses.field(default="always",
                                metadata={"choices": WHEN, "owner": "any"})
  add_to_inner_loss: bool = _owned("any", False)
  term_fields: tuple[tuple[str, Any], ...] = dataclasses.field(
      default=(), metadata={"flag": False})

  def __post_init__(self):
    if self.alpha is None:
      object.__setattr__(self, "alpha", 1.0 if self.hessian_estimator == "trace" else 0.01)
    if self.kind != "none":
      terms.get(self.kind)  # an unknown kind: TermError listing the registered ones
    for name, accepted in (("hessian_estimator", HESSIAN_ESTIMATORS), ("when", WHEN)):
      if getattr(self, name) not in accepted:
        raise ValueError(f"unknown regularizer {name} {getattr(self, name)!r}; accepted: "
                         f"{', '.join(accepted)}")
    for name in ("hessian_probes", "power_iters", "entropy_chains", "entropy_steps"):
      _checks.positive_int(name, getattr(self, name))
    for name in ("alpha", "beta", "entropy_gamma", "entropy_step_size"):
      _checks.positive_number(name, getattr(self, name))
    if not isinstance(self.entropy_noise, (int, float)) or not 0 <= self.entropy_noise < math.inf:
      raise ValueError(f"entropy_noise must be a non-negative number, got {self.entropy_noise!r}")
    pairs = self.term_fields.items() if isinstance(self.term_fields, dict) else self.term_fields
    object.__setattr__(self, "term_fields", tuple((str(k), v) for k, v in pairs))
    if self.term_fields and self.kind in ("none",) + tuple(_TERMS):
      raise ValueError(f"term_fields are the settings of a registered term of your own; "
                       f"--regularizer={self.kind} takes its own flags (--alpha, --beta, ...)")
    if self.kind not in _TERMS and self.active:
      self.term()  # the term's own checks, now rather than at the first meta-step

  @property
  def active(self) -> bool:
    return self.kind != "none"

  def term(self) -> Any:
    """The term this record spells (its own kind's settings only), or None for 'none'.

    Returns:
      A `HessianTerm`, an `EntropyTerm`, a registered term of your own, or None.

    Raises:
      TermError: a field the term does not have (`when` or `add_to_inner_loss`
        set for a term without that field included).
    """
    if not self.active:
      return None
    if self.kind in _TERMS:
      return _TERMS[self.kind](**{
          f.metadata.get("term_field") or f.name: getattr(self, f.name)
          for f in dataclasses.fields(self) if f.metadata.get("owner") in (self.kind, "any")})
    values = dict(self.term_fields)
    for name, default in _SCHEDULE_DEFAULTS.items():
      if getattr(self, name) != default:  # only a term with such a field can be scheduled
        values.setdefault(name, getattr(self, name))
    return terms.build(self.kind, values)

  @classmethod
  def with_coefficient(cls, kind: str, coefficient: float | None) -> "RegularizerConfig":
    """Term `kind` with its coefficient field (`terms.coefficient_field`) set, the rest default.

    Args:
      kind: 'none' or a registered term.
      coefficient: the coefficient (ignored for 'none').

    Returns:
      The record (a study cell's regularizer: alpha for 'hessian', beta for 'entropy').
    """
    if kind == "none":
      return cls()
    field = terms.coefficient_field(kind)
    if kind in _TERMS:
      return cls(kind=kind, **{field: coefficient})
    return cls(kind=kind, term_fields=((field, coefficient),))

  @classmethod
  def of(cls, term: Any) -> "RegularizerConfig":
    """The flat record of `term` (None: no term); `of(t).term() == t`.

    Args:
      term: None or an instance of a registered term.

    Returns:
      The `RegularizerConfig` that spells it.

    Raises:
      TermError: `term` is not an instance of a registered term.
    """
    if term is None:
      return cls()
    kind = terms.name_of(term)
    if kind in _TERMS:
      return cls(kind=kind, **{
          f.name: getattr(term, f.metadata.get("term_field") or f.name)
          for f in dataclasses.fields(cls) if f.metadata.get("owner") in (kind, "any")})
    values = terms.fields_of(term)
    flat = {name: values.pop(name) for name in _SCHEDULE_DEFAULTS if name in values}
    return cls(kind=kind, term_fields=tuple(values.items()), **flat)


# The settings of the objective's schedule, passed to a term of your own that has them.
_SCHEDULE_DEFAULTS = {"when": "always", "add_to_inner_loss": False}


def estimator_names() -> tuple[str, ...]:
  """The meta-gradient estimators: the built-ins, and any registered since
  (`flatl2o.meta.estimators.register`; only importing that module can add one, so
  until then the built-ins are all, and this stays free of JAX).

  Returns:
    The accepted estimator names, a tuple of strings.
  """
  registry = sys.modules.get("flatl2o.meta.estimators")
  return registry.names() if registry is not None else ESTIMATORS


def owned_fields() -> dict[str, tuple[str, ...]]:
  """`kind -> the RegularizerConfig fields only that kind reads` (from field metadata).

  Returns:
    A dict from owner ('hessian', 'entropy' or 'any') to the tuple of the names of
    the `RegularizerConfig` fields whose metadata names that owner.
  """
  owners: dict[str, tuple[str, ...]] = {}
  for f in dataclasses.fields(RegularizerConfig):
    owner = f.metadata.get("owner")
    if owner is not None:
      owners[owner] = owners.get(owner, ()) + (f.name,)
  return owners


def _not_identity(default):
  """A host field that changes how long a run goes or how often it reports, not what it
  computes: a run directory may be resumed (or extended) with another value."""
  return dataclasses.field(default=default, metadata={"identity": False})


def suggest_remat_block_length(unroll_length: int) -> int:
  """The divisor k of `unroll_length` that minimises `unroll_length / k + k` (stored states).

  Args:
    unroll_length: inner steps per truncation, a positive integer.

  Returns:
    The divisor k (an int; the smallest one on a tie), a `remat_block_length` suggestion.
  """
  divisors = [k for k in range(1, unroll_length + 1) if unroll_length % k == 0]
  return min(divisors, key=lambda k: (unroll_length // k + k, k))


@dataclasses.dataclass(frozen=True)
class MetaTrainConfig:
  """How a learned optimizer is meta-trained.

  Attributes:
    unroll_length: inner steps per truncation (one meta-gradient).
    num_inner_steps: inner steps per episode; a multiple of `unroll_length`.
      Each episode starts from fresh optimizee initialisations; its
      truncations carry the optimizee and optimizer state forward.
    meta_batch_size: optimizees trained at once (vmapped) per meta-step.
    num_meta_iterations: meta-steps (truncations) in the whole run.
    meta_learning_rate: Adam learning rate on the meta-parameters.
    meta_grad_clip: global-norm clip of the meta-gradient.
    meta_loss: 'mean' (mean inner training loss over the unroll) or
      'log_ratio' (mean of log(f_t / f_0), f_0 the episode's first loss).
    second_order: differentiate through the inner gradients fed to the
      optimizer (off by default, as in Andrychowicz et al.).
    validation_every: meta-steps between validations; the learned optimizer
      then trains fresh optimizees for `validation_horizon` steps and is scored
      on the validation split; the best one is kept.
    validation_horizon: inner steps of a validation run (the meta-test horizon).
    validation_seeds: optimizees per validation (fixed seeds across the run).
    checkpoint_every: meta-steps between checkpoints (with a run directory).
    log_every: meta-steps between metric lines.
    seed: the run's seed; every key is derived from it and the meta-step index.
    regularizer: the flatness term of the meta-objective (`RegularizerConfig`).
    max_consecutive_skipped: non-finite meta-steps in a row that stop the run.
    random_scaling: s of Lv et al.'s random scaling; each episode trains
      `f(c * x)` with `c = exp(U(-s, s))` drawn per coordinate and
      `x_0 = theta_0 / c` (the same function at the start, another geometry);
      0 turns it off.
    convex_term: weight lambda of Lv et al.'s combination with a convex
      function; each episode trains `f(x) + lambda / 2 * mean((x - v)^2)` with
      `v ~ N(0, 1)` drawn per coordinate; 0 turns it off.
    curriculum: grow the episode length through `curriculum_horizons` (Chen et
      al. 2020): the horizon advances at the first validation that does not
      beat the current stage's best, and training restarts from the best
      meta-parameters and meta-optimizer state found so far.
    curriculum_horizons: increasing multiples of `unroll_length`, the last one
      `num_inner_steps`; used with `curriculum`. None follows `num_inner_steps`
      (`default_horizons`: about a fifth, a half and all of it); without
      `curriculum` None stands for (40, 100, 200), the value older versions
      recorded, so their run directories resume.
    imitation_ratio: probability that a meta-step fits the learned optimizer's
      updates to Adam's along an Adam trajectory instead of unrolling it
      (Chen et al. 2020); 0 turns imitation off.
    remat_block_length: bounds the memory of a truncation's backward pass. The
      unroll is scanned in blocks of this many inner steps; the backward keeps
      the optimizee and optimizer state only at block boundaries and recomputes
      one block at a time, so it holds about `unroll_length / k + k` states
      instead of `unroll_length` (k near sqrt(unroll_length) is the smallest),
      at the price of one more forward pass. 1 keeps every step's state (the
      fastest); must divide `unroll_length`. Same meta-gradient either way.
    num_devices: devices the meta-batch is split over (`flatl2o.meta.sharding`;
      every process's devices in a multi-host run); `meta_batch_size` must be a
      multiple of it. None takes as many of the devices present as divide the
      meta-batch; 1 keeps everything on one device.
    estimator: how the meta-gradient is estimated (`flatl2o.meta.estimators`):
      'truncated' (backpropagation through each truncation), 'pes'
      (Persistent Evolution Strategies: unbiased over the whole episode) or
      'es' (antithetic evolution strategies over one truncation), or one
      registered with `flatl2o.meta.estimators.register` (--import its module).
    es_std: standard deviation of the Gaussian perturbations of 'pes' and 'es'.
    es_pairs: antithetic pairs of perturbations per meta-step ('pes', 'es').
    patience: stop early once this many meta-steps have passed since the best
      validation (and `min_meta_iterations` are done): meta-training "until
      validation stops improving", `num_meta_iterations` then being the cap.
      None always runs `num_meta_iterations`.
    min_meta_iterations: meta-steps done before `patience` may stop a run.

  Fields marked `identity=False` in their metadata (budgets, checkpoint and log
  intervals, the memory knob) may change when a run directory is resumed; the
  ones `UnrollConfig` lists are all the compiled steps read.
  """

  unroll_length: int = 20
  num_inner_steps: int = 200
  meta_batch_size: int = 4
  num_meta_iterations: int = _not_identity(500)
  meta_learning_rate: float = 1e-3
  meta_grad_clip: float = 1.0
  meta_loss: str = dataclasses.field(default="mean", metadata={"choices": META_LOSSES})
  second_order: bool = False
  validation_every: int = 50
  validation_horizon: int = 200
  validation_seeds: int = 4
  checkpoint_every: int = _not_identity(50)
  log_every: int = _not_identity(10)
  seed: int = 0
  regularizer: RegularizerConfig = RegularizerConfig()
  max_consecutive_skipped: int = _not_identity(20)
  random_scaling: float = 0.0
  convex_term: float = 0.0
  curriculum: bool = False
  curriculum_horizons: tuple[int, ...] | None = dataclasses.field(
      default=None, metadata={"resolved": True})
  imitation_ratio: float = 0.0
  remat_block_length: int = _not_identity(1)
  num_devices: int | None = None
  estimator: str = "truncated"
  es_std: float = 0.01
  es_pairs: int = 8
  patience: int | None = _not_identity(None)
  min_meta_iterations: int = _not_identity(0)

  def __post_init__(self):
    for name in ("unroll_length", "num_inner_steps", "meta_batch_size", "num_meta_iterations",
                 "validation_every", "validation_horizon", "validation_seeds",
                 "checkpoint_every", "log_every", "max_consecutive_skipped",
                 "remat_block_length", "es_pairs"):
      _checks.positive_int(name, getattr(self, name))
    if self.num_devices is not None:
      _checks.positive_int("num_devices", self.num_devices)
    if self.patience is not None:
      _checks.positive_int("patience", self.patience)
    if isinstance(self.min_meta_iterations, bool) or not isinstance(
        self.min_meta_iterations, int) or self.min_meta_iterations < 0:
      raise ValueError("min_meta_iterations must be a non-negative integer, got "
                       f"{self.min_meta_iterations!r}")
    if self.unroll_length % self.remat_block_length:
      raise ValueError(f"remat_block_length ({self.remat_block_length}) must divide "
                       f"unroll_length ({self.unroll_length}); e.g. "
                       f"{suggest_remat_block_length(self.unroll_length)}")
    if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
      raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
    if self.num_inner_steps % self.unroll_length:
      raise ValueError(f"num_inner_steps ({self.num_inner_steps}) must be a multiple of "
                       f"unroll_length ({self.unroll_length})")
    for name in ("meta_learning_rate", "meta_grad_clip", "es_std"):
      _checks.positive_number(name, getattr(self, name))
    accepted = estimator_names()
    if self.estimator not in accepted:
      raise ValueError(f"unknown estimator {self.estimator!r}; accepted: {', '.join(accepted)}")
    if not isinstance(self.regularizer, RegularizerConfig):
      try:
        object.__setattr__(self, "regularizer", RegularizerConfig.of(self.regularizer))
      except terms.TermError:
        raise ValueError("regularizer must be a RegularizerConfig, a registered flatness term "
                         f"(flatl2o.meta.terms) or None, got {type(self.regularizer).__name__}"
                         ) from None
    if self.meta_loss not in META_LOSSES:
      raise ValueError(f"unknown meta_loss {self.meta_loss!r}; accepted: {', '.join(META_LOSSES)}")
    for name in ("random_scaling", "convex_term"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a non-negative number (0 turns it off), got {value!r}")
    ratio = self.imitation_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
      raise ValueError(f"imitation_ratio must be a probability in [0, 1], got {ratio!r}")
    if self.curriculum_horizons is None:  # resolved here: run.json records the value used
      horizons = (default_horizons(self.num_inner_steps, self.unroll_length) if self.curriculum
                  else _UNUSED_HORIZONS)
      object.__setattr__(self, "curriculum_horizons", horizons)
    object.__setattr__(self, "curriculum_horizons", tuple(self.curriculum_horizons))
    if self.curriculum:
      self._check_curriculum()

  def _check_curriculum(self):
    horizons = self.curriculum_horizons
    if not horizons:
      raise ValueError("curriculum_horizons must list at least one horizon")
    for h in horizons:
      _checks.positive_int("each of curriculum_horizons", h)
      if h % self.unroll_length:
        raise ValueError(f"curriculum_horizons {list(horizons)}: {h} is not a multiple of "
                         f"unroll_length ({self.unroll_length})")
    if any(b <= a for a, b in zip(horizons, horizons[1:])):
      raise ValueError(f"curriculum_horizons must be increasing, got {list(horizons)}")
    if horizons[-1] != self.num_inner_steps:
      raise ValueError(f"curriculum_horizons {list(horizons)} must end at num_inner_steps "
                       f"({self.num_inner_steps}), the horizon the curriculum grows to")

  @property
  def truncations_per_episode(self) -> int:
    return self.num_inner_steps // self.unroll_length

  @property
  def horizons(self) -> tuple[int, ...]:
    """The episode lengths of the curriculum's stages (one stage without a curriculum)."""
    return self.curriculum_horizons if self.curriculum else (self.num_inner_steps,)

  def unroll_config(self, num_inner_steps: int | None = None) -> "UnrollConfig":
    """What the compiled steps read, with episodes of `num_inner_steps` (default: this
    configuration's; a curriculum stage passes its horizon).

    Runs that differ only in host settings (seed, budgets, validation, logging,
    curriculum, imitation) get equal `UnrollConfig`s and so share compilations.

    Args:
      num_inner_steps: the episode length; None keeps this configuration's
        `num_inner_steps`.

    Returns:
      An `UnrollConfig` with this configuration's values of its fields and, as
      `regularizer`, the flatness term itself (`RegularizerConfig.term()`).
    """
    values = {f.name: getattr(self, f.name) for f in dataclasses.fields(UnrollConfig)}
    values["regularizer"] = self.regularizer.term()
    if num_inner_steps is not None:
      values["num_inner_steps"] = num_inner_steps
    return UnrollConfig(**values)


def identity_fields() -> tuple[str, ...]:
  """The `MetaTrainConfig` fields that define a run (all but those marked identity=False).

  Returns:
    The field names, a tuple of strings in declaration order.
  """
  return tuple(f.name for f in dataclasses.fields(MetaTrainConfig)
               if f.metadata.get("identity", True))


def default_horizons(num_inner_steps: int, unroll_length: int) -> tuple[int, ...]:
  """The curriculum's default stages: about `num_inner_steps` / 5, / 2 and all of it.

  Each is rounded down to a multiple of `unroll_length`; zeros and repeats are
  dropped (`num_inner_steps` = 200, `unroll_length` = 20: (40, 100, 200)).

  Args:
    num_inner_steps: the episode length the curriculum grows to (the last stage).
    unroll_length: inner steps per truncation; the stages are multiples of it.

  Returns:
    The increasing stage horizons, a tuple of ints ending at `num_inner_steps`.
  """
  horizons = []
  for h in (num_inner_steps // 5, num_inner_steps // 2, num_inner_steps):
    h = h // unroll_length * unroll_length if h != num_inner_steps else h
    if h > 0 and h not in horizons:
      horizons.append(h)
  return tuple(horizons)


# What curriculum_horizons was before it followed num_inner_steps; a run without a
# curriculum records it (unused), as older run.json files do.
_UNUSED_HORIZONS = (40, 100, 200)


@dataclasses.dataclass(frozen=True)
class UnrollConfig:
  """What a compiled meta-step, initialisation or imitation step reads, and nothing else.

  `MetaTrainConfig.unroll_config()` makes one; the jitted steps take it as a
  static argument, so it is their compilation key. A host setting (seed, budget,
  validation, ...) is not a field here: compiled code cannot read one by mistake.
  The fields mean what the `MetaTrainConfig` fields of the same names mean;
  `num_inner_steps` is the current episode length (a curriculum stage's horizon)
  and `regularizer` is the flatness term itself (`RegularizerConfig.term()`).
  """

  unroll_length: int = 20
  num_inner_steps: int = 200
  meta_batch_size: int = 4
  meta_learning_rate: float = 1e-3
  meta_grad_clip: float = 1.0
  meta_loss: str = "mean"
  second_order: bool = False
  regularizer: Any = None  # a flatness term (flatl2o.meta.terms) or None
  random_scaling: float = 0.0
  convex_term: float = 0.0
  remat_block_length: int = 1
  num_devices: int | None = None
  estimator: str = "truncated"
  es_std: float = 0.01
  es_pairs: int = 8

  @property
  def truncations_per_episode(self) -> int:
    return self.num_inner_steps // self.unroll_length

  def unroll_config(self, num_inner_steps: int | None = None) -> "UnrollConfig":
    """This configuration (with episodes of `num_inner_steps` when given).

    Args:
      num_inner_steps: the episode length; None (or the current one) keeps this one.

    Returns:
      This `UnrollConfig`, or a copy with `num_inner_steps` replaced.
    """
    if num_inner_steps is None or num_inner_steps == self.num_inner_steps:
      return self
    return dataclasses.replace(self, num_inner_steps=num_inner_steps)


def as_unroll_config(config: MetaTrainConfig | UnrollConfig) -> UnrollConfig:
  """`config.unroll_config()`: the compiled steps accept either kind of configuration.

  Args:
    config: a `MetaTrainConfig` or an `UnrollConfig`.

  Returns:
    The `UnrollConfig` of `config` (itself when it already is one).
  """
  return config.unroll_config()
