"""The card of a pretrained optimizer: its fields, their checks, and card.md.

card.json:
  name, summary        the folder name; one line saying what it is
  architecture, hparams  as in the export's optimizer.json (filled in from it)
  export_sha256        the checksum of meta_params.npz (filled in from the export)
  regularizer          {"kind": "none" | "hessian" | "entropy", "coefficient_name":
                       "alpha" | "beta" (not for "none"), "coefficient": float, "config":
                       the run's RegularizerConfig}
  training             how it was meta-trained: TRAINING_FIELDS (task, dataset, the
                       command, the run's MetaTrainConfig, meta-seed, selected meta-step,
                       its validation accuracy, date, machine), anything else allowed
  measured             a list of measurements, each MEASURED_FIELDS: what, commands
                       (the exact command lines), date, machine, results
                       (label -> metric -> {"mean", "ci95", "n", ...}); optional
                       "tuning" ({"criterion", "grid", "selected", "command"}) of a
                       baseline's learning rate
  notes                optional free text
"""

from __future__ import annotations

import json
import math
from typing import Any

from flatl2o.meta import terms

CARD_FIELDS = ("name", "summary", "architecture", "hparams", "export_sha256", "regularizer",
               "training", "measured")
TRAINING_FIELDS = ("task", "dataset", "command", "meta_train_config", "meta_seed",
                   "selected_meta_step", "validation_accuracy", "date", "machine")
MEASURED_FIELDS = ("what", "commands", "date", "machine", "results")


def complete(name: str, card: Any, description: dict, lopt, error: type[ValueError]) -> dict:
  """`card` with the export's fields filled in, checked; `error` (one line) if it does not fit."""
  from flatl2o.optimizers import base  # pylint: disable=g-import-not-at-top
  if not isinstance(card, dict):
    raise error(f"a card is a JSON object, got {type(card).__name__}")
  hparams = json.loads(json.dumps(base.architecture_hparams(lopt)))
  filled = {"name": name, "architecture": lopt.name, "hparams": hparams,
            "export_sha256": description["sha256"]}
  for key, value in filled.items():
    if key in card and key != "export_sha256" and card[key] != value:
      raise error(f"card field {key!r} is {card[key]!r} but the export says {value!r}")
  card = {**card, **filled}
  missing = [f for f in CARD_FIELDS if f not in card]
  if missing:
    raise error(f"card lacks {', '.join(missing)} (a card has {', '.join(CARD_FIELDS)})")
  if not isinstance(card["summary"], str) or not card["summary"].strip():
    raise error("card field 'summary' must be a non-empty string")

  regularizer = card["regularizer"]
  kind = regularizer.get("kind") if isinstance(regularizer, dict) else None
  accepted = ("none",) + terms.names()
  if kind not in accepted:
    raise error(f"card field 'regularizer' needs 'kind' in {', '.join(accepted)}, got "
                f"{regularizer!r}")
  if kind != "none":
    name = terms.coefficient_field(kind)
    if regularizer.get("coefficient_name") != name or not _is_number(
        regularizer.get("coefficient")):
      raise error(f"a {kind} regularizer's card gives coefficient_name "
                  f"{name!r} and its numeric coefficient")

  training = card["training"]
  if not isinstance(training, dict):
    raise error("card field 'training' must be an object")
  missing = [f for f in TRAINING_FIELDS if f not in training]
  if missing:
    raise error(f"card field 'training' lacks {', '.join(missing)}")
  if not _is_number(training["validation_accuracy"]) or not 0 <= training[
      "validation_accuracy"] <= 1:
    raise error(f"training.validation_accuracy must be in [0, 1], got "
                f"{training['validation_accuracy']!r}")

  measured = card["measured"]
  if not isinstance(measured, list):
    raise error("card field 'measured' must be a list (empty until something is measured)")
  for i, entry in enumerate(measured):
    missing = [f for f in MEASURED_FIELDS if not isinstance(entry, dict) or f not in entry]
    if missing:
      raise error(f"measured[{i}] lacks {', '.join(missing)}")
    if not isinstance(entry["commands"], list) or not all(
        isinstance(c, str) for c in entry["commands"]):
      raise error(f"measured[{i}].commands must be a list of command lines")
  try:
    return json.loads(json.dumps(card, allow_nan=False))
  except (TypeError, ValueError) as e:
    raise error(f"a card must be plain JSON (no NaN): {e}") from None


def _is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _cell(summary) -> str:
  if not isinstance(summary, dict) or "mean" not in summary:
    return "-" if summary is None else str(summary)
  signed = "+" if "p" in summary else ""  # a difference shows its sign and its p-value
  text = f"{summary['mean']:{signed}.4f}"
  if _is_number(summary.get("ci95")):
    text += f" ± {summary['ci95']:.4f}"
  if _is_number(summary.get("p")):
    text += f" (p = {summary['p']:.2g}" + (
        f", Holm {summary['p_holm']:.2g}" if _is_number(summary.get("p_holm")) else "") + ")"
  return text


def versus_adam_line(card: dict) -> str | None:
  """One line: the card's measured paired difference to tuned Adam on each optimizee."""
  entry = next((e for e in card["measured"] if isinstance(e, dict)
                and e.get("kind") == "versus_adam"), None)
  if entry is None:
    return None
  parts = [f"{label.rsplit(' on ', 1)[-1]} {_cell(row.get(VERSUS_ADAM_METRIC))}"
           for label, row in entry["results"].items()]
  return (f"**Against {entry['baseline']}** (test accuracy, paired over "
          f"{entry['seeds']} seeds, {entry['num_steps']} steps): " + "; ".join(parts) + ".")


VERSUS_ADAM_METRIC = "test accuracy − tuned Adam"


def _regularizer_line(regularizer: dict) -> str:
  if regularizer["kind"] == "none":
    return "none (plain meta-loss)"
  return f"{regularizer['kind']}, {regularizer['coefficient_name']} = {regularizer['coefficient']:g}"


def render_card(card: dict) -> str:
  """card.md: the card for people, every figure with the command that produced it."""
  t = card["training"]
  hparams = ", ".join(f"{k}={v}" for k, v in sorted(card["hparams"].items()))
  lines = [
      f"# Pretrained optimizer `{card['name']}`",
      "",
      card["summary"],
      "",
      *([versus_adam_line(card), ""] if versus_adam_line(card) else []),
      "```python",
      "import flatl2o",
      f"tx = flatl2o.pretrained.load({card['name']!r})   # an optax transformation",
      "```",
      "",
      f"or `python -m experiments.evaluate --optimizer=pretrained:{card['name']}`.",
      "",
      "| | |",
      "|---|---|",
      f"| architecture | `{card['architecture']}` ({hparams}) |",
      f"| regularizer | {_regularizer_line(card['regularizer'])} |",
      f"| meta-trained on | `{t['task']}` on `{t['dataset']}` |",
      f"| meta-seed | {t['meta_seed']} |",
      f"| selected meta-step | {t['selected_meta_step']} (best validation accuracy) |",
      f"| validation accuracy | {t['validation_accuracy']:.4f} |",
      f"| trained | {t['date']}, {t['machine']} |",
      f"| meta_params.npz SHA-256 | `{card['export_sha256']}` |",
      "",
      "Meta-training command:",
      "",
      "```bash",
      t["command"],
      "```",
      "",
  ]
  config = t["meta_train_config"]
  if isinstance(config, dict):
    shown = ", ".join(f"{k}={config[k]}" for k in sorted(config) if k != "regularizer")
    lines += [f"Meta-training configuration: {shown}.", ""]
  lines += ["## Measured", ""]
  if not card["measured"]:
    lines += ["Nothing measured yet.", ""]
  for entry in card["measured"]:
    results = entry["results"]
    first = ("test_accuracy", "test_loss", "train_loss")
    metrics = sorted({m for r in results.values() for m in r if m != "per_seed"},
                     key=lambda m: (first.index(m) if m in first else len(first), m))
    lines += [f"{entry['what']} ({entry['date']}, {entry['machine']}; mean ± 95% interval "
              "over seeds):", ""]
    lines += ["| optimizer | " + " | ".join(metrics) + " |",
              "|---|" + "---|" * len(metrics)]
    for label, row in results.items():
      lines.append(f"| {label} | " + " | ".join(_cell(row.get(m)) for m in metrics) + " |")
    tuning = entry.get("tuning")
    if isinstance(tuning, dict) and {"criterion", "grid", "selected"} <= set(tuning):
      grid = ", ".join(f"{g:g}" for g in tuning["grid"])
      lines += ["", f"Tuned learning rate: {tuning['selected']:g} of {{{grid}}}, by "
                f"{tuning['criterion']}" + (f": `{tuning['command']}`." if tuning.get("command")
                                            else ".")]
    lines += ["", "Commands:", "", "```bash", *entry["commands"], "```", ""]
  if card.get("notes"):
    lines += ["## Notes", "", card["notes"], ""]
  lines += ["(Rendered from card.json by `flatl2o.pretrained.render_card`.)", ""]
  return "\n".join(lines)
