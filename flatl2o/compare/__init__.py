"""Given optimizers compared on one optimizee: `experiments.evaluate`'s library side.

- `multiseed`: one optimizer (any spec `flatl2o.optimizers.resolve` takes) trained
  on one optimizee over several seeds into its own folder (`EvaluateConfig`,
  `evaluate`): curves, a summary with intervals, landscape slices.
- `paired`: several optimizers over the same seeds into one folder
  (`CompareConfig`, `compare`): paired differences to the first, p-values
  Holm-adjusted over the table, curves.

The paper's study (`flatl2o.study`) does not use these; it meta-tests its own
contenders cell by cell.

Example:

>>> import tempfile
>>> from flatl2o import compare
>>> config = compare.EvaluateConfig(
...     task="quadratic", dataset=None, data_dir=None, optimizer="adam", learning_rate=0.1,
...     num_steps=20, batch_size=8, eval_every=10, seeds=(0, 1), out_dir=tempfile.mkdtemp())
>>> summary = compare.evaluate(config, log=lambda line: None)
>>> summary["over_seeds"]["train_loss"]["n"]
2
"""

from flatl2o import _lazy

# Both import JAX: loaded on first use (PEP 562), so experiments.evaluate checks its
# flags before the heavy imports.
_MODULES = ("multiseed", "paired")
_NAMES = {"EvaluateConfig": "multiseed", "evaluate": "multiseed",
          "CompareConfig": "paired", "compare": "paired"}
__all__ = ["CompareConfig", "EvaluateConfig", "compare", "evaluate", "multiseed", "paired"]

__getattr__, __dir__ = _lazy.attach(__name__, _MODULES, _NAMES, __all__)
