r"""Ships a coefficient sweep: copies --preset=sweep runs' results into flatl2o/study/.

  python -m experiments.reproduce --preset=sweep            # runs/reproduce-sweep
  python scripts/ship_sweep.py runs/reproduce-sweep/results.json          # -> sweep.json

  # every model's sweep (the models preset's file), merging sweeps of the same settings:
  python -m experiments.reproduce --preset=sweep --models=rnnprop,l2o_scale,l2o_dm_enhanced,mlp_lopt \
      --run_dir=runs/sweep-models
  python scripts/ship_sweep.py --to=sweep_models.json flatl2o/study/sweep.json \
      runs/sweep-models/results.json

The default study (--preset=primary) takes its coefficients from sweep.json, the
models preset from sweep_models.json. The file keeps the command, date, machine
and wall time of every sweep that made it (`sources`), its points (validation
accuracy, collapse, gradient ratio per coefficient, each with its model), each
model's term summaries (`sweep_models`) and coefficients (`model_coefficients`);
`coefficients`, `sweep_terms`, `command`, `date`, `machine` and `wall_time_s` are
the first input's first model's. Inputs that are not sweeps, sweep the same model
twice, or differ in their meta-training settings are refused (exit 2).
"""

import dataclasses
import os
import sys

from flatl2o import atomic_files
from flatl2o.study import config as study_config
from flatl2o.study import sweep

FIRST = ("command", "date", "machine", "wall_time_s", "coefficients", "sweep_terms")


def _settings(data: dict) -> dict:
  return data.get("config", {}).get("settings") or data.get("settings") or {}


def _meta_training(settings: dict) -> dict:
  """The settings a sweep point's meta-training depends on (the horizons of a meta-test
  and the like do not matter to a sweep)."""
  fields = [f.name for f in dataclasses.fields(study_config.Preset)
            if f.metadata.get("meta_train")] + ["sweep_seeds", "sweep_range"]
  defaults = {"meta_learning_rate": 1e-3}
  return {k: settings.get(k, defaults.get(k)) for k in fields}


def merge(inputs: list[tuple[str, dict]]) -> dict:
  """One shipped sweep from several (path, sweep) pairs; ValueError names what is wrong."""
  shipped = {"sources": [], "sweep": [], "sweep_models": {}, "model_coefficients": {}}
  for path, data in inputs:
    settings = _settings(data)
    if not settings.get("sweep_only"):
      raise ValueError(f"{path} is not a --preset=sweep run's results.json")
    if _meta_training(settings) != _meta_training(_settings(inputs[0][1])):
      raise ValueError(f"{path} was meta-trained with other settings than {inputs[0][0]}")
    by_model = data.get("sweep_models") or {"l2o_dm": data.get("sweep_terms", {})}
    for model, coefficients in sweep.model_coefficients(data).items():
      if model in shipped["model_coefficients"]:
        raise ValueError(f"{path} sweeps {model} again")
      shipped["model_coefficients"][model] = coefficients
      shipped["sweep_models"][model] = by_model.get(model, {})
    shipped["sweep"] += [{"model": "l2o_dm", **p} for p in data.get("sweep", [])]
    shipped["sources"].append({"models": list(sweep.model_coefficients(data)),
                               **{k: data.get(k) for k in FIRST[:4]}})
  first = inputs[0][1]
  shipped.update({k: first[k] for k in FIRST if k in first})
  shipped["settings"] = _settings(first)
  if len(inputs) > 1:
    shipped["wall_time_s"] = sum(s["wall_time_s"] or 0.0 for s in shipped["sources"])
  return shipped


def main(argv):
  args = argv[1:]
  name = "sweep.json"
  if args and args[0].startswith("--to="):
    name, args = args[0][len("--to="):], args[1:]
  if not args or os.sep in name or not name.endswith(".json"):
    print(f"usage: python {argv[0]} [--to=NAME.json] RESULTS.json [RESULTS.json ...]",
          file=sys.stderr)
    return 2
  try:
    shipped = merge([(path, sweep.load(path)) for path in args])
  except ValueError as e:
    print(f"ship_sweep.py: {e}", file=sys.stderr)
    return 2
  out = os.path.join(os.path.dirname(sweep.SWEEP_FILE), name)
  atomic_files.write_json(out, shipped)
  print(f"wrote {os.path.relpath(out)}: " + "; ".join(
      f"{m}: " + ", ".join(f"{k} {v:g}" for k, v in c.items())
      for m, c in shipped["model_coefficients"].items()))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
