"""The Colab notebooks (experiments/colab/*.ipynb) run top to bottom, with tiny budgets.

Each notebook has one settings cell (marked `SETTINGS_MARKER`) of module-level
constants; the test rewrites the ones in `TINY` (each must be assigned exactly
once there), runs the notebook in a fresh `python3` kernel (ipykernel's own
kernelspec, run with this interpreter) in a temporary folder, and checks that no
cell errored, that the printed results parse and lie in range, and that the
figures came out. A notebook that raises fails (nbclient raises
`CellExecutionError`; `test_a_raising_notebook_fails` checks that the helper
lets it through). The install cell is run on its own with pip mocked.

The kernel gets the repository root on PYTHONPATH and in FLATL2O_SOURCE, so
the notebooks import this checkout and their install cell never runs pip.
"""

import importlib.util
import math
import os
import re
import subprocess
import sys
from unittest import mock

from absl.testing import absltest, parameterized
import nbclient
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(ROOT, "experiments", "colab")
SETTINGS_MARKER = "# settings (the tests shrink these)"
KERNEL = "python3"

# Budgets that keep each notebook to well under a minute here; the numbers
# they produce mean nothing, only that every cell runs and reports.
TINY = {
    "quickstart.ipynb": {
        "META_ITERATIONS": 2, "META_BATCH_SIZE": 1, "UNROLL_LENGTH": 5, "NUM_INNER_STEPS": 10,
        "VALIDATION_EVERY": 2, "VALIDATION_HORIZON": 10, "TRAIN_STEPS": 20, "BATCH_SIZE": 32,
    },
    "flatness.ipynb": {
        "TRAIN_STEPS": 20, "EVAL_EVERY": 10, "TRACE_PROBES": 4, "LANCZOS_ITERS": 8,
        "SLQ_PROBES": 1, "POINTS_1D": 5, "POINTS_2D": 5,
    },
}
OPTIMIZERS = ("adam", "l2o_dm", "l2o_dm_hessian", "l2o_dm_entropy")  # flatness.ipynb's rows


def read(name: str) -> nbformat.NotebookNode:
  return nbformat.read(os.path.join(COLAB, name), as_version=4)


def settings_cell(nb) -> nbformat.NotebookNode:
  cells = [c for c in nb.cells if c.cell_type == "code" and SETTINGS_MARKER in c.source]
  if len(cells) != 1:
    raise AssertionError(f"expected one code cell marked {SETTINGS_MARKER!r}, found {len(cells)}")
  return cells[0]


def shrink(nb, values: dict) -> None:
  """Rewrites `NAME = ...` lines of the settings cell to `NAME = value`, in place."""
  cell = settings_cell(nb)
  for name, value in values.items():
    cell.source, count = re.subn(rf"^{name}\s*=.*$", f"{name} = {value!r}", cell.source,
                                 flags=re.M)
    if count != 1:
      raise AssertionError(f"settings cell assigns {name} {count} times, expected once")


def execute(nb, cwd: str) -> nbformat.NotebookNode:
  """Runs `nb` in a fresh kernel with `cwd` as its working folder; raises on a cell error."""
  env = {"FLATL2O_SOURCE": ROOT,
         "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
  with mock.patch.dict(os.environ, env):
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name=KERNEL,
                                     resources={"metadata": {"path": cwd}})
    client.execute()
  return nb


def outputs(nb):
  return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def stdout(nb) -> str:
  return "".join(out.text for out in outputs(nb)
                 if out.output_type == "stream" and out.name == "stdout")


def num_images(nb) -> int:
  return sum("image/png" in out.get("data", {}) for out in outputs(nb)
             if out.output_type in ("display_data", "execute_result"))


class NotebookFilesTest(parameterized.TestCase):
  """What the committed files must be, without running them."""

  @parameterized.parameters(*TINY)
  def test_committed_clean(self, name):
    nb = read(name)
    nbformat.validate(nb)
    self.assertEqual(nb.nbformat, 4)
    self.assertEqual(nb.metadata.kernelspec.name, KERNEL)
    for i, cell in enumerate(nb.cells):
      if cell.cell_type == "code":
        self.assertEqual(cell.outputs, [], f"{name} cell {i} has stored outputs")
        self.assertIsNone(cell.execution_count, f"{name} cell {i} has an execution count")
    shrink(nb, TINY[name])  # every shrunk setting exists, once

  @parameterized.parameters(*TINY)
  def test_install_cell(self, name):
    first = next(c for c in read(name).cells if c.cell_type == "code")
    self.assertIn("FLATL2O_SOURCE", first.source)
    with mock.patch.dict(os.environ, {"FLATL2O_SOURCE": ROOT}), \
         mock.patch.object(subprocess, "check_call") as pip:
      exec(first.source, {})  # pylint: disable=exec-used
      pip.assert_not_called()  # flatl2o is importable here
      with mock.patch.object(importlib.util, "find_spec", return_value=None):
        exec(first.source, {})  # pylint: disable=exec-used
    pip.assert_called_once()
    command = pip.call_args.args[0]
    self.assertEqual(command[:4], [sys.executable, "-m", "pip", "install"])
    self.assertEqual(command[-1], ROOT)

  def test_kernel_is_found(self):
    self.assertIn(KERNEL, KernelSpecManager().find_kernel_specs())


@pytest.mark.slow
class NotebooksRunTest(absltest.TestCase):

  def test_a_raising_notebook_fails(self):
    nb = nbformat.v4.new_notebook(
        metadata={"kernelspec": {"name": KERNEL, "display_name": "Python 3"}})
    nb.cells = [nbformat.v4.new_code_cell("print('fine')"),
                nbformat.v4.new_code_cell("raise ValueError('broken on purpose')")]
    with self.assertRaisesRegex(nbclient.exceptions.CellExecutionError, "broken on purpose"):
      execute(nb, self.create_tempdir().full_path)

  def run_notebook(self, name):
    nb = read(name)
    shrink(nb, TINY[name])
    execute(nb, self.create_tempdir().full_path)
    errors = [out for out in outputs(nb) if out.output_type == "error"]
    self.assertEqual(errors, [])
    text = stdout(nb)
    self.assertIn("flatl2o is already importable", text)
    return nb, text

  def test_quickstart(self):
    nb, text = self.run_notebook("quickstart.ipynb")
    self.assertRegex(text, r"meta-training took \d+ s for 2 meta-steps")
    number = r"(\d+\.\d+|nan)"
    found = re.findall(rf"^(linen|nnx) test accuracy: adam {number}, l2o_dm\+hessian {number}, "
                       rf"pretrained l2o_dm_hessian {number}$", text, re.M)
    self.assertEqual([f[0] for f in found], ["linen", "nnx"], text)
    for model, *values in found:
      for value in map(float, values):
        self.assertTrue(0.0 <= value <= 1.0, f"{model}: accuracy {value} outside [0, 1]")
    # the nnx loop starts from the linen loop's parameters: the same run for every optimizer
    self.assertEqual(found[0][1:], found[1][1:], text)
    self.assertGreaterEqual(num_images(nb), 1)

  def test_flatness(self):
    nb, text = self.run_notebook("flatness.ipynb")
    header = ["optimizer", "train loss", "test accuracy", "hessian trace", "top eigenvalue"]
    table = [[f.strip() for f in line.split("|")] for line in text.splitlines() if "|" in line]
    self.assertIn(header, table, text)
    rows = {}
    for fields in table:
      if len(fields) == 5 and fields[0] in OPTIMIZERS:
        rows[fields[0]] = [float(f) for f in fields[1:]]
    self.assertEqual(sorted(rows), sorted(OPTIMIZERS), text)
    for name, (loss, accuracy, trace, top) in rows.items():
      self.assertTrue(math.isfinite(loss) and loss > 0, f"{name}: training loss {loss}")
      self.assertTrue(0.0 <= accuracy <= 1.0, f"{name}: accuracy {accuracy}")
      self.assertTrue(math.isfinite(trace) and trace > 0, f"{name}: trace {trace}")
      self.assertTrue(math.isfinite(top) and top > 0, f"{name}: top eigenvalue {top}")
    # the SLQ density, 1-D slices, 2-D slices, trace against training loss
    self.assertGreaterEqual(num_images(nb), 4)


if __name__ == "__main__":
  absltest.main()
