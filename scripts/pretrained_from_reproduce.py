r"""Ships the best optimizers of an `experiments.reproduce` run as pretrained ones, with cards.

  python scripts/pretrained_from_reproduce.py --run_dir=runs/reproduce-cpu-digits \
      --names=l2o_dm=l2o_dm:none,l2o_dm_hessian=l2o_dm:hessian,l2o_dm_entropy=l2o_dm:entropy

For each NAME=MODEL:REGULARIZER, takes the meta-training of that model and
regularizer (at the coefficient the run chose on validation) whose selected
meta-parameters have the best validation accuracy over the run's meta-training
seeds, measures it on fresh digits MLPs against Adam (500 steps, held-out seeds
1000-1004, the same figures `experiments.evaluate --optimizer=pretrained:NAME`
prints), and adds it to `flatl2o/pretrained/NAME` with a card holding the
reproduction's meta-test figures of that optimizer on every optimizee. The
card's training command is the `experiments.meta_train` line that meta-trains
that one optimizer alone (`flatl2o.study.meta_train_command`); the whole
reproduction's command is beside it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

import flatl2o  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import _cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from flatl2o import evaluation, optimizers, report, study, tasks  # pylint: disable=g-import-not-at-top,wrong-import-position
from flatl2o.meta import terms  # pylint: disable=g-import-not-at-top,wrong-import-position

_RUN_DIR = flags.DEFINE_string("run_dir", None, "A finished experiments.reproduce run directory.")
_NAMES = flags.DEFINE_list("names", None, "NAME=MODEL:REGULARIZER entries.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace pretrained optimizers of these names.")
_MACHINE = flags.DEFINE_string("machine", "2-core CPU", "Where the run and the measurement ran.")
_ROOT = flags.DEFINE_string("root", None, "Folder of the pretrained optimizers; default the "
                            "package's flatl2o/pretrained.")

DIGITS_SEEDS = (1000, 1001, 1002, 1003, 1004)
DIGITS_STEPS = 500


def _parse(entries):
  out = {}
  for entry in entries:
    name, _, spec = entry.partition("=")
    model, _, kind = spec.partition(":")
    if not name or model not in study.MODELS or kind not in study.REGULARIZERS:
      raise ValueError(f"--names entry {entry!r} is not NAME=MODEL:REGULARIZER with MODEL in "
                       f"{', '.join(study.MODELS)} and REGULARIZER in "
                       f"{', '.join(study.REGULARIZERS)}")
    out[name] = (model, kind)
  return out


def _digits_measurement(tx_of, labels):
  task = tasks.get("mlp_sigmoid", "digits")
  results = {}
  for label, tx in zip(labels, tx_of):
    runs = [evaluation.train(task, tx, DIGITS_STEPS, jax.random.key(s)) for s in DIGITS_SEEDS]
    acc = [float(r.metrics["test"]["accuracy"][-1]) for r in runs]
    results[label] = {"test_accuracy": report.summarize(acc),
                      "per_seed": {"seed": list(DIGITS_SEEDS), "test_accuracy": acc}}
  return results


def main(argv):
  del argv
  if not _RUN_DIR.value or not _NAMES.value:
    raise ValueError("give --run_dir (a finished experiments.reproduce run) and --names")
  wanted = _parse(_NAMES.value)
  path = os.path.join(_RUN_DIR.value, "results.json")
  if not os.path.exists(path):
    raise ValueError(f"{path} does not exist: run experiments.reproduce to the end first")
  with open(path) as f:
    results = json.load(f)
  config = study.config_from_identity(results["config"])
  command = study.study_command(config)
  date = time.strftime("%Y-%m-%d")
  adam = optimizers.get("adam", learning_rate=0.01)
  for name, (model, kind) in wanted.items():
    coefficient = (results.get("model_coefficients") or {}).get(
        model, results["coefficients"]).get(kind)  # each model's since 2026-12-08
    candidates = [c for c in results["meta_training"].values()
                  if c["model"] == model and c["regularizer"] == kind and "budget" not in
                  c["name"] and c["coefficient"] == coefficient and not c["collapsed"]
                  and c["meta_seed"] in config.settings.meta_seeds]
    if not candidates:
      raise ValueError(f"{_RUN_DIR.value} has no non-collapsed {model} + {kind} optimizer")
    best = max(candidates, key=lambda c: (c["best_validation_accuracy"], -c["meta_seed"]))
    export = os.path.join(_RUN_DIR.value, best["export"])
    meta_config = study.meta_config(model, kind, coefficient, best["meta_seed"], config.settings)
    reg = {"kind": kind, "config": dataclasses.asdict(meta_config.regularizer)}
    if kind != "none":
      reg.update(coefficient_name=terms.coefficient_field(kind),
                 coefficient=coefficient)
    cells = [c for c in results["cells"] if c["contender"] == best["name"]]
    per_optimizee = {}
    for c in cells:
      per_optimizee.setdefault(c["optimizee"], []).append(c)
    meta_test = {o: {m: report.summarize([c[m] for c in cs])
                     for m in ("train_loss", "test_accuracy", "hessian_trace")}
                 for o, cs in per_optimizee.items()}
    digits = _digits_measurement([flatl2o.load_optimizer(export), adam],
                                 [f"pretrained {name}", "adam (lr 0.01)"])
    card = {
        "summary": (f"{model} meta-trained " + ("plain" if kind == "none" else
                    f"with the {kind} flatness term ({reg['coefficient_name']} = "
                    f"{coefficient:g}, chosen on validation)") +
                    f" by the `{config.preset}` preset of experiments.reproduce on "
                    f"mlp_sigmoid / {config.dataset}; the best of {len(candidates)} "
                    "meta-training seeds by validation accuracy."),
        "regularizer": reg,
        "training": {
            "task": study.SEEN, "dataset": config.dataset,
            "command": study.meta_train_command(config, model, kind, coefficient,
                                                   best["meta_seed"]),
            "protocol_command": command,
            "meta_train_config": json.loads(json.dumps(dataclasses.asdict(meta_config))),
            "meta_seed": best["meta_seed"], "selected_meta_step": best["best_meta_step"],
            "validation_accuracy": best["best_validation_accuracy"],
            "validations": best["validations"], "date": date, "machine": _MACHINE.value,
            "meta_training_wall_time_s": best["wall_time_s"],
        },
        "measured": [
            {"what": f"test accuracy of a fresh mlp_sigmoid on digits after {DIGITS_STEPS} "
                     f"steps, held-out seeds {DIGITS_SEEDS[0]}-{DIGITS_SEEDS[-1]}, against Adam "
                     "at its default learning rate (paired seeds)",
             "commands": [f"python -m experiments.evaluate --task=mlp_sigmoid --dataset=digits "
                          f"--num_steps={DIGITS_STEPS} --seeds={','.join(map(str, DIGITS_SEEDS))}"
                          f" --optimizer={o}" for o in (f"pretrained:{name}",
                                                        "adam --learning_rate=0.01")],
             "date": date, "machine": _MACHINE.value, "results": digits},
            {"what": "the reproduction's meta-test of this optimizer on the seen and unseen "
                     f"optimizees ({config.settings.test_horizon} steps, test seeds "
                     f"{results['test_seeds']})",
             "commands": [command], "date": date, "machine": _MACHINE.value,
             "results": {f"pretrained {name} on {o}": v for o, v in meta_test.items()}},
        ],
        "notes": (f"Meta-trained for {best['num_meta_iterations']} meta-steps (episodes of "
                  f"{config.settings.num_inner_steps} inner steps) on a {_MACHINE.value}: a small "
                  "budget; see docs/results.md for what the regularizers did at this scale."),
    }
    flatl2o.pretrained.add(name, export, card, root=_ROOT.value, overwrite=_OVERWRITE.value)
    got = digits[f"pretrained {name}"]["test_accuracy"]["mean"]
    print(f"{name}: {best['name']} (validation {best['best_validation_accuracy']:.4f} at "
          f"meta-step {best['best_meta_step']}); digits {DIGITS_STEPS} steps test accuracy "
          f"{got:.4f} vs Adam 0.01 {digits['adam (lr 0.01)']['test_accuracy']['mean']:.4f}")


if __name__ == "__main__":
  _cli.run(main)
