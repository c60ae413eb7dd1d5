r"""Meta-train a learned optimizer and export it.

  python -m experiments.meta_train --optimizer=l2o_dm --task=mlp_sigmoid \
      --dataset=digits --num_meta_iterations=500 --run_dir=runs/l2o_dm

The run directory holds `run.json` (what the run is), orbax checkpoints,
`metrics.jsonl`, TensorBoard summaries, and at the end `optimizer/`, the
learned optimizer with the best validation score (load it with
`flatl2o.load_optimizer` or pass it to `experiments.evaluate --optimizer=`).
Rerunning the same command resumes from the last checkpoint.

Every field of `flatl2o.meta.MetaTrainConfig` is a flag of the same name
(`--unroll_length=40`; the regularizer's as `--regularizer=hessian`, `--alpha`,
`--regularize_when`, ...) and can also be set as `--config.FIELD=VALUE`
(`--config.regularizer.alpha=0.01`); `--helpfull` lists them with their help.

--regularizer=hessian|entropy adds the flatness term of Yang et al. (2023) to
the meta-objective (see flatl2o/meta/terms.py). A term of your own, registered
with `flatl2o.meta.terms.register` in a module of yours, is meta-trained with
--import=MODULE --regularizer=NAME and its fields as --config.regularizer.FIELD=VALUE
(`--import` also brings a user's optimizers and tasks to --optimizer and --task). --optimizer=l2o_scale
meta-trains with --meta_loss=log_ratio unless told otherwise, as its paper did.

A run always exports the best-validated meta-parameters. When no validation
lowered the training loss (below 0.9x its start), the best-scoring one is
exported anyway, marked in optimizer.json ("metadata": {"status": ...}), and
one line says so on stderr:
  exit 0  undertrained: no --regularizer; the optimizer has not learned yet
          (meta-train longer).
  exit 3  collapsed: with --regularizer, the flatness term taught it to stand
          still (lower --alpha or --beta).
A meta-training that diverged (too many non-finite meta-steps in a row) exports
nothing and exits with code 3; bad flags exit with code 2, before anything is
written. SIGINT (Ctrl-C) or SIGTERM stops after the current meta-step with a
checkpoint of it, one line, and exit code 130 / 143.

The meta-batch is split over --num_devices devices (default: as many as are
present and divide --meta_batch_size). A multi-host run starts the same command
on every host with --coordinator_address=HOST0:PORT --num_processes=N
--process_id=I (and a --run_dir every host sees); README, "Many devices".
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import flags

from experiments import _cli, _config_flags
from flatl2o import builtin_names
from flatl2o.meta import config as meta_config
from flatl2o.meta import terms

# Only light modules above: the flags are checked before JAX and the rest are
# imported (in main), so a bad flag fails at once.
_OPTIMIZER = _cli.name_flag("optimizer", "l2o_dm", builtin_names.LEARNED,
                            "flatl2o.optimizers:learned_names", "Learned optimizer architecture.")
_TASK = _cli.name_flag("task", "mlp_sigmoid", builtin_names.TASKS, "flatl2o.tasks:names",
                       "Optimizee.")
_DATASET = flags.DEFINE_string("dataset", None, "Dataset (default digits; see evaluate).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir for prepared datasets.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Inner minibatch size.")
_RUN_DIR = flags.DEFINE_string(
    "run_dir", None, "Run directory; default runs/meta_train/OPTIMIZER-TASK-DATASET-sSEED.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host run: HOST:PORT of process 0 "
    "(jax.distributed.initialize), with --num_processes and --process_id.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host run: processes in all.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host run: this process, 0 to "
                                   "--num_processes - 1.")

# Every MetaTrainConfig field is a flag (--unroll_length, --alpha, ...) and a
# --config.FIELD override, both derived from the dataclass and its docstring.
_CONFIG = _config_flags.define(meta_config.MetaTrainConfig,
                               renames=_config_flags.META_TRAIN_RENAMES,
                               open_prefix="regularizer")


def config_from_flags() -> meta_config.MetaTrainConfig:
  """The MetaTrainConfig of the command line; ValueError on values that do not fit."""
  config, given = _config_flags.build(_CONFIG)
  kind = config.regularizer.kind
  if _CONFIG.open_args:  # --config.regularizer.FIELD=VALUE of a user's term
    if kind in meta_config.KINDS:
      field = next(iter(_CONFIG.open_args))
      raise ValueError(f"unknown configuration field --config.regularizer.{field}; "
                       f"--regularizer={kind} takes: "
                       f"{', '.join(p.split('.', 1)[1] for p in _CONFIG.flag_names if p.startswith('regularizer.'))}")
    term = terms.build(kind, _CONFIG.open_args)
    config = dataclasses.replace(config, regularizer=dataclasses.replace(
        config.regularizer, term_fields=tuple((f, getattr(term, f)) for f in _CONFIG.open_args)))
  spelled = lambda field: "--" + _CONFIG.flag_names[f"regularizer.{field}"]
  # Settings that only mean something for one kind of regularizer (field metadata).
  owned = meta_config.owned_fields()
  for owner in ("hessian", "entropy"):
    for field in owned[owner]:
      if f"regularizer.{field}" in given and kind != owner:
        raise ValueError(f"{spelled(field)} belongs to --regularizer={owner}, but "
                         f"--regularizer={kind}")
  for field in owned["any"]:
    if f"regularizer.{field}" in given and kind == "none":
      raise ValueError(f"{spelled(field)} needs a --regularizer (hessian, entropy, or a "
                       "registered term of your own)")
  if "curriculum_horizons" in given and not config.curriculum:
    raise ValueError("--curriculum_horizons needs --curriculum")
  from flatl2o import optimizers  # pylint: disable=g-import-not-at-top  (imports JAX)
  preferred = optimizers.registry.LEARNED[_OPTIMIZER.value].preferred_meta_loss
  if preferred is not None and "meta_loss" not in given:
    config = dataclasses.replace(config, meta_loss=preferred)  # L2O-Scale: log-ratio
  return config


def main(argv):
  del argv
  # Before anything imports JAX: a folder that cannot be written is one line at once.
  _cli.check_output_folder("--run_dir", _RUN_DIR.value or os.path.join("runs", "meta_train"))
  config = config_from_flags()  # raises ValueError on bad values: exit 2, nothing written
  run_dir = _RUN_DIR.value or os.path.join("runs", "meta_train", _cli.safe_name(
      f"{_OPTIMIZER.value}-{_TASK.value}-{_DATASET.value or 'default'}-s{config.seed}"))
  _cli.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from flatl2o import meta, optimizers, tasks  # pylint: disable=g-import-not-at-top
  lopt = optimizers.learned(_OPTIMIZER.value)
  task = tasks.get(_TASK.value, _DATASET.value, data_dir=_DATA_DIR.value,
                   batch_size=_BATCH_SIZE.value)
  stop = _cli.StopRequests()
  try:
    result = meta.meta_train(lopt, task, config, run_dir=run_dir,
                             callback=_cli.progress_line(config.num_meta_iterations),
                             should_stop=stop.requested)
  except meta.MetaTrainingDivergedError as e:
    sys.stderr.write(f"meta_train: {e}\n")
    sys.exit(3)
  except meta.MetaTrainingInterrupted as e:
    stop.exit(f"interrupted at meta-step {e.iteration}; checkpoint saved in {run_dir}; "
              "rerun the same command to resume")
  if result.resumed_from is not None:
    print(f"resumed from meta-step {result.resumed_from}")
  export = os.path.join(run_dir, "optimizer")
  if result.status == "undertrained":
    sys.stderr.write(
        "meta_train: the learned optimizer did not yet lower the training loss at any "
        f"validation (undertrained): exported anyway to {export}; meta-train longer "
        "(--num_meta_iterations)\n")
    return
  if result.status == "collapsed":
    coefficient = terms.coefficient_field(config.regularizer.kind)
    flag = (f"--{coefficient}" if config.regularizer.kind in terms.BUILTIN
            else f"--config.regularizer.{coefficient}")
    sys.stderr.write(
        "meta_train: the learned optimizer collapsed: at every validation it no longer lowered "
        f"the training loss (--regularizer={config.regularizer.kind} taught it to stand "
        f"still): exported anyway to {export}, marked collapsed; lower {flag}\n")
    sys.exit(3)
  print(f"best validation score {result.best_score:.4f} at meta-step {result.best_iteration}; "
        f"{result.num_skipped} meta-steps skipped as non-finite")
  print(f"exported {export}")


if __name__ == "__main__":
  _cli.run(main)
