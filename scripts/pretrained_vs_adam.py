r"""Measures each pretrained optimizer against tuned Adam and writes it on its card.

  python scripts/pretrained_vs_adam.py --adam_learning_rate=0.1 [--names=l2o_dm,rnnprop]

For each shipped optimizer (or those named) and each optimizee of the default
study (the seen mlp_sigmoid, the unseen mlp_relu and mlp_deep, on digits), runs
exactly the command the card then shows,

  python -m experiments.evaluate --task=T --dataset=digits --num_steps=400 --eval_every=50 \
      --seeds=1000,1001,1002,1003,1004 --optimizer=adam,pretrained:NAME \
      --learning_rate=LR

(in process, `flatl2o.compare.paired`): Adam at the tuned learning rate LR and the
pretrained optimizer on the same five held-out seeds. The paired difference in
test accuracy (pretrained - Adam: mean, 95% interval, p), Holm-adjusted over the
optimizees, replaces any earlier such entry of the card (`"kind": "versus_adam"`),
and card.md is rendered again; the export is untouched. `--adam_learning_rate` is
the default study's tuned rate (results.json "tuning"; grid 0.003-0.1 by
validation accuracy at 400 steps).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from experiments import _cli  # pylint: disable=g-import-not-at-top,wrong-import-position

_NAMES = flags.DEFINE_list("names", None, "Pretrained optimizers; default: every shipped one.")
_ADAM_LR = flags.DEFINE_float("adam_learning_rate", None, "Tuned Adam's learning rate.")
_MACHINE = flags.DEFINE_string("machine", "2-core CPU", "Where the measurement runs.")

OPTIMIZEES = ("mlp_sigmoid", "mlp_relu", "mlp_deep")
SEEDS = (1000, 1001, 1002, 1003, 1004)
NUM_STEPS, EVAL_EVERY = 400, 50


def command(task: str, name: str, learning_rate: float) -> str:
  return (f"python -m experiments.evaluate --task={task} --dataset=digits "
          f"--num_steps={NUM_STEPS} --eval_every={EVAL_EVERY} "
          f"--seeds={','.join(map(str, SEEDS))} --optimizer=adam,pretrained:{name} "
          f"--learning_rate={learning_rate:g}")


def measure(name: str, learning_rate: float, machine: str) -> dict:
  """The card's "versus_adam" entry of pretrained optimizer `name`."""
  from flatl2o import stats  # pylint: disable=g-import-not-at-top
  from flatl2o.pretrained import _cards  # pylint: disable=g-import-not-at-top
  from flatl2o.compare import paired as compare  # pylint: disable=g-import-not-at-top
  results = {}
  for task in OPTIMIZEES:
    with tempfile.TemporaryDirectory() as out:
      summary = compare.compare(compare.CompareConfig(
          task=task, dataset="digits", data_dir=None,
          optimizers=("adam", f"pretrained:{name}"), num_steps=NUM_STEPS, batch_size=128,
          eval_every=EVAL_EVERY, seeds=SEEDS, out_dir=out, learning_rate=learning_rate),
          log=lambda line: None)
    d = summary["per_optimizer"][f"pretrained:{name}"]["minus_first"]["test_accuracy"]
    results[f"pretrained {name} on {task}"] = {_cards.VERSUS_ADAM_METRIC: {
        "mean": d["mean"], "ci95": d["ci95"], "n": len(SEEDS), "p": d["p"]}}
  rows = [r[_cards.VERSUS_ADAM_METRIC] for r in results.values()]
  for row, q in zip(rows, stats.holm([r["p"] for r in rows])["adjusted"]):
    row["p_holm"] = q
  return {"kind": "versus_adam", "baseline": f"tuned Adam (lr {learning_rate:g})",
          "seeds": len(SEEDS), "num_steps": NUM_STEPS,
          "what": (f"paired difference in test accuracy to tuned Adam (lr {learning_rate:g}) "
                   f"after {NUM_STEPS} steps on the default study's optimizees (digits), "
                   f"held-out seeds {SEEDS[0]}-{SEEDS[-1]}; p from the paired t-test, Holm "
                   f"over the {len(OPTIMIZEES)} optimizees"),
          "commands": [command(t, name, learning_rate) for t in OPTIMIZEES],
          "date": time.strftime("%Y-%m-%d"), "machine": machine, "results": results}


def main(argv):
  del argv
  import flatl2o  # pylint: disable=g-import-not-at-top
  if _ADAM_LR.value is None or _ADAM_LR.value <= 0:
    raise ValueError("give --adam_learning_rate, tuned Adam's (the default study's "
                     "results.json \"tuning\"), a positive number")
  names = _NAMES.value or list(flatl2o.pretrained.names())
  for name in names:
    card = flatl2o.pretrained.card(name)  # an unknown name: one line listing the names
    entry = measure(name, _ADAM_LR.value, _MACHINE.value)
    card["measured"] = [e for e in card["measured"] if e.get("kind") != "versus_adam"]
    card["measured"].insert(0, entry)
    folder = flatl2o.pretrained.path(name)
    flatl2o.pretrained.add(name, folder, card, root=os.path.dirname(folder), overwrite=True)
    print(f"{name}: " + "; ".join(
        f"{label.rsplit(' on ', 1)[-1]} {row['test accuracy − tuned Adam']['mean']:+.4f} "
        f"(p {row['test accuracy − tuned Adam']['p']:.2g})"
        for label, row in entry["results"].items()))


if __name__ == "__main__":
  _cli.run(main)
