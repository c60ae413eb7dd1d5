"""The shape of the code: no function in flatl2o/ over 80 lines, no module imports one of a
higher layer (the layers, lowest first, as WORKSPACE.md draws them), and every public function
of a public module documents its arguments and result (optax-style Args / Returns)."""

import ast
import os
import pathlib

from absl.testing import absltest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flatl2o"
MAX_LINES = 80

# Lowest first; a module may import its own layer and those below (packages by prefix).
LAYERS = (
    ("flatl2o._checks", "flatl2o._lazy", "flatl2o.builtin_names", "flatl2o.stats",
     "flatl2o.atomic_files", "flatl2o.environment", "flatl2o.config_fields"),
    ("flatl2o.flatness", "flatl2o.folders", "flatl2o.report", "flatl2o.data"),
    ("flatl2o.tasks", "flatl2o.optimizers.base", "flatl2o.optimizers.registry",
     "flatl2o.optimizers.l2o_dm", "flatl2o.optimizers.rnnprop", "flatl2o.optimizers.l2o_scale",
     "flatl2o.optimizers.mlp_lopt", "flatl2o.optimizers.hand_designed",
     "flatl2o.optimizers.entropy_sgd", "flatl2o.optimizers", "flatl2o.meta.terms"),
    ("flatl2o.checkpoints", "flatl2o.pretrained", "flatl2o.evaluation"),
    ("flatl2o.resolve", "flatl2o.meta"),
    ("flatl2o.study", "flatl2o.compare"),
    ("flatl2o",),  # the public surface: lazy, above everything
)
# A package's optimizers/__init__ is its submodules' layer; its PEP 562 __getattr__ may name
# a module above (flatl2o.optimizers.resolve is flatl2o/resolve.py's function).


def _modules():
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(ROOT).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    yield name, path


def _layer(module: str) -> int | None:
  best = None
  for i, names in enumerate(LAYERS):
    for prefix in names:
      if module == prefix or module.startswith(prefix + "."):
        if best is None or len(prefix) > best[1]:
          best = (i, len(prefix))
  return None if best is None else best[0]


def _imports(path):
  tree = ast.parse(path.read_text())
  lazy = {id(n) for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "__getattr__"
          for n in ast.walk(f)}
  for node in ast.walk(tree):
    if id(node) in lazy:
      continue
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module == "flatl2o" or node.module.startswith("flatl2o."):
        for alias in node.names:
          candidate = f"{node.module}.{alias.name}"
          yield candidate if _layer(candidate) is not None else node.module
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("flatl2o"):
          yield alias.name


class LayoutTest(absltest.TestCase):

  def test_no_function_is_longer_than_80_lines(self):
    long = []
    for _, path in _modules():
      for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
          lines = node.end_lineno - node.lineno + 1
          if lines > MAX_LINES:
            long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    self.assertEmpty(long)

  def test_no_import_runs_from_a_lower_layer_to_a_higher_one(self):
    upward = []
    for module, path in _modules():
      own = _layer(module)
      self.assertIsNotNone(own, f"{module} is in no layer of tests/test_layout.py")
      for target in _imports(path):
        theirs = _layer(target)
        if theirs is not None and theirs > own and not target.startswith(module + "."):
          upward.append(f"{module} (layer {own}) imports {target} (layer {theirs})")
    self.assertEmpty(upward)


  def test_public_functions_document_args_and_returns(self):
    missing = []
    for module, path in _modules():
      if any(part.startswith("_") for part in module.split(".")):
        continue  # a private module
      tree = ast.parse(path.read_text())
      functions = [(None, n) for n in tree.body if isinstance(n, ast.FunctionDef)]
      functions += [(c.name, n) for c in tree.body if isinstance(c, ast.ClassDef)
                    and not c.name.startswith("_") for n in c.body
                    if isinstance(n, ast.FunctionDef)]
      for owner, fn in functions:
        if fn.name.startswith("_"):
          continue
        doc = ast.get_docstring(fn) or ""
        args = [a.arg for a in fn.args.args + fn.args.kwonlyargs if a.arg not in ("self", "cls")]
        returns = any(isinstance(n, ast.Return) and n.value is not None
                      and not (isinstance(n.value, ast.Constant) and n.value.value is None)
                      for n in ast.walk(fn))
        is_property = any(isinstance(d, ast.Name) and d.id == "property"
                          for d in fn.decorator_list)
        where = f"{path.relative_to(ROOT)}:{fn.lineno} {owner + '.' if owner else ''}{fn.name}"
        if args and "Args:" not in doc:
          missing.append(f"{where}: no Args")
        if (returns and not is_property and "Returns" not in doc and "Yields:" not in doc):
          missing.append(f"{where}: no Returns")
    self.assertEmpty(missing)


if __name__ == "__main__":
  absltest.main()
