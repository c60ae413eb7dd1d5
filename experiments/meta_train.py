r"""Meta-train a learned optimizer and export it.

  python -m experiments.meta_train --optimizer=l2o_dm --task=mlp_sigmoid \
      --dataset=digits --num_meta_iterations=500 --run_dir=runs/l2o_dm

The run directory holds `run.json` (what the run is), orbax checkpoints,
`metrics.jsonl`, TensorBoard summaries, and at the end `optimizer/`, the
learned optimizer with the best validation score (load it with
`flatl2o.load_optimizer` or pass it to `experiments.evaluate --optimizer=`).
Rerunning the same command resumes from the last checkpoint.

--regularizer=hessian|entropy adds the flatness term of Yang et al. (2023) to
the meta-objective (see flatl2o/meta/objective.py). A run whose optimizer
collapsed (stopped lowering the training loss at every validation) exports
nothing and exits with code 3.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from experiments import _cli
from flatl2o import meta, optimizers, tasks
from flatl2o.meta import objective

_OPTIMIZER = flags.DEFINE_enum("optimizer", "l2o_dm", optimizers.learned_names(),
                               "Learned optimizer architecture.")
_TASK = flags.DEFINE_enum("task", "mlp_sigmoid", tasks.names(), "Optimizee.")
_DATASET = flags.DEFINE_string("dataset", None, "Dataset (default digits; see evaluate).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir for prepared datasets.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Inner minibatch size.")
_RUN_DIR = flags.DEFINE_string(
    "run_dir", None, "Run directory; default runs/meta_train/OPTIMIZER-TASK-DATASET-sSEED.")

_defaults = meta.MetaTrainConfig()
_UNROLL = flags.DEFINE_integer("unroll_length", _defaults.unroll_length,
                               "Inner steps per truncation.")
_INNER = flags.DEFINE_integer("num_inner_steps", _defaults.num_inner_steps,
                              "Inner steps per episode (a multiple of unroll_length).")
_META_BATCH = flags.DEFINE_integer("meta_batch_size", _defaults.meta_batch_size,
                                   "Optimizees per meta-step.")
_ITERATIONS = flags.DEFINE_integer("num_meta_iterations", _defaults.num_meta_iterations,
                                   "Meta-steps.")
_META_LR = flags.DEFINE_float("meta_learning_rate", _defaults.meta_learning_rate,
                              "Adam learning rate of the meta-optimizer.")
_CLIP = flags.DEFINE_float("meta_grad_clip", _defaults.meta_grad_clip,
                           "Global-norm clip of the meta-gradient.")
_META_LOSS = flags.DEFINE_enum("meta_loss", _defaults.meta_loss, meta.META_LOSSES,
                               "Meta-loss form.")
_SECOND_ORDER = flags.DEFINE_bool("second_order", _defaults.second_order,
                                  "Differentiate through the inner gradients.")
_VAL_EVERY = flags.DEFINE_integer("validation_every", _defaults.validation_every,
                                  "Meta-steps between validations.")
_VAL_HORIZON = flags.DEFINE_integer("validation_horizon", _defaults.validation_horizon,
                                    "Inner steps of a validation run.")
_VAL_SEEDS = flags.DEFINE_integer("validation_seeds", _defaults.validation_seeds,
                                  "Optimizees per validation.")
_CKPT_EVERY = flags.DEFINE_integer("checkpoint_every", _defaults.checkpoint_every,
                                   "Meta-steps between checkpoints.")
_LOG_EVERY = flags.DEFINE_integer("log_every", _defaults.log_every,
                                  "Meta-steps between progress lines.")
_SEED = flags.DEFINE_integer("seed", _defaults.seed, "Seed of the run.")
_MAX_SKIPPED = flags.DEFINE_integer(
    "max_consecutive_skipped", _defaults.max_consecutive_skipped,
    "Non-finite meta-steps in a row after which the run stops (exit code 3).")

_reg = meta.RegularizerConfig()
_REGULARIZER = flags.DEFINE_enum("regularizer", "none", objective.KINDS,
                                 "Flatness term added to the meta-objective.")
_HESSIAN_ESTIMATOR = flags.DEFINE_enum("hessian_estimator", _reg.hessian_estimator,
                                       objective.HESSIAN_ESTIMATORS,
                                       "Hessian term: trace/n, or the top eigenvalue.")
_ALPHA = flags.DEFINE_float("alpha", None, "Hessian coefficient (default 1 for trace, "
                            "0.01 for eigenvalue and lanczos).")
_HESSIAN_PROBES = flags.DEFINE_integer("hessian_probes", _reg.hessian_probes,
                                       "Hutchinson probes per trace estimate.")
_POWER_ITERS = flags.DEFINE_integer("power_iters", _reg.power_iters,
                                    "Hessian-vector products per eigenvalue estimate.")
_BETA = flags.DEFINE_float("beta", _reg.beta, "Local-entropy coefficient.")
_GAMMA = flags.DEFINE_float("entropy_gamma", _reg.entropy_gamma, "Local-entropy gamma.")
_CHAINS = flags.DEFINE_integer("entropy_chains", _reg.entropy_chains, "Langevin chains K.")
_STEPS = flags.DEFINE_integer("entropy_steps", _reg.entropy_steps, "Langevin steps L.")
_STEP_SIZE = flags.DEFINE_float("entropy_step_size", _reg.entropy_step_size,
                                "Langevin step size.")
_NOISE = flags.DEFINE_float("entropy_noise", _reg.entropy_noise, "Langevin noise scale.")
_WHEN = flags.DEFINE_enum("regularize_when", _reg.when, objective.WHEN,
                          "Which unrolls of an episode get the flatness term.")
_INNER_LOSS = flags.DEFINE_bool("regularize_inner_loss", _reg.add_to_inner_loss,
                                "Also add the term to the loss the optimizer sees.")

_FLAGS_OF = {
    "hessian": ("hessian_estimator", "alpha", "hessian_probes", "power_iters"),
    "entropy": ("beta", "entropy_gamma", "entropy_chains", "entropy_steps",
                "entropy_step_size", "entropy_noise"),
}


def regularizer_from_flags() -> meta.RegularizerConfig:
  kind = _REGULARIZER.value
  for owner, names in _FLAGS_OF.items():
    for name in names:
      if flags.FLAGS[name].present and kind != owner:
        raise ValueError(f"--{name} belongs to --regularizer={owner}, but --regularizer={kind}")
  for name in ("regularize_when", "regularize_inner_loss"):
    if flags.FLAGS[name].present and kind == "none":
      raise ValueError(f"--{name} needs --regularizer=hessian or --regularizer=entropy")
  return meta.RegularizerConfig(
      kind=kind, hessian_estimator=_HESSIAN_ESTIMATOR.value, alpha=_ALPHA.value,
      hessian_probes=_HESSIAN_PROBES.value, power_iters=_POWER_ITERS.value, beta=_BETA.value,
      entropy_gamma=_GAMMA.value, entropy_chains=_CHAINS.value, entropy_steps=_STEPS.value,
      entropy_step_size=_STEP_SIZE.value, entropy_noise=_NOISE.value, when=_WHEN.value,
      add_to_inner_loss=_INNER_LOSS.value)


def config_from_flags() -> meta.MetaTrainConfig:
  return meta.MetaTrainConfig(
      unroll_length=_UNROLL.value, num_inner_steps=_INNER.value,
      meta_batch_size=_META_BATCH.value, num_meta_iterations=_ITERATIONS.value,
      meta_learning_rate=_META_LR.value, meta_grad_clip=_CLIP.value,
      meta_loss=_META_LOSS.value, second_order=_SECOND_ORDER.value,
      validation_every=_VAL_EVERY.value, validation_horizon=_VAL_HORIZON.value,
      validation_seeds=_VAL_SEEDS.value, checkpoint_every=_CKPT_EVERY.value,
      log_every=_LOG_EVERY.value, seed=_SEED.value, regularizer=regularizer_from_flags(),
      max_consecutive_skipped=_MAX_SKIPPED.value)


def main(argv):
  del argv
  config = config_from_flags()  # raises ValueError on bad values: exit 2, nothing written
  lopt = optimizers.learned(_OPTIMIZER.value)
  task = tasks.get(_TASK.value, _DATASET.value, data_dir=_DATA_DIR.value,
                   batch_size=_BATCH_SIZE.value)
  run_dir = _RUN_DIR.value or os.path.join(
      "runs", "meta_train",
      f"{_OPTIMIZER.value}-{_TASK.value}-{_DATASET.value or 'default'}-s{config.seed}".replace(
          "/", "_").replace(":", "_"))
  try:
    result = meta.meta_train(lopt, task, config, run_dir=run_dir,
                             callback=_cli.progress_line(config.num_meta_iterations))
  except meta.MetaTrainingDivergedError as e:
    sys.stderr.write(f"meta_train: {e}\n")
    sys.exit(3)
  if result.resumed_from is not None:
    print(f"resumed from meta-step {result.resumed_from}")
  if result.collapsed:
    sys.stderr.write(
        "meta_train: the learned optimizer collapsed: at every validation it no longer lowered "
        "the training loss, so nothing was exported; lower --alpha or --beta, or train "
        "without --regularizer\n")
    sys.exit(3)
  print(f"best validation score {result.best_score:.4f} at meta-step {result.best_iteration}; "
        f"{result.num_skipped} meta-steps skipped as non-finite")
  print(f"exported {os.path.join(run_dir, 'optimizer')}")


if __name__ == "__main__":
  _cli.run(main)
