"""Every binary's output folder that cannot be written: one line, exit 2, nothing written,
before JAX is imported (so well within 3 s): a file, a path under a file, an unwritable
folder, a read-only filesystem."""

import os
import subprocess
import sys
import tempfile

from absl.testing import absltest, parameterized

from flatl2o import folders

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BINARIES = (("experiments.meta_train", "--run_dir"), ("experiments.reproduce", "--run_dir"),
            ("experiments.evaluate", "--out_dir"))


def _run(module, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-X", "importtime", "-m", module, *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300, check=False)


def _listing(top):
  return sorted(os.path.join(d, n) for d, dirs, files in os.walk(top) for n in dirs + files)


class ReadOnlyMount:
  """A read-only tmpfs (needs root and mount rights; None where they are missing)."""

  def __init__(self):
    self.path = tempfile.mkdtemp(prefix="flatl2o-ro-")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", self.path],
                          capture_output=True, check=False) if os.geteuid() == 0 else None
    self.mounted = made is not None and made.returncode == 0

  def close(self):
    if self.mounted:
      subprocess.run(["umount", self.path], check=False)
    os.rmdir(self.path)


class OutputPathTest(parameterized.TestCase):

  def _check(self, module, flag, path, message, top):
    before = _listing(top)
    proc = _run(module, f"{flag}={path}")
    lines = [l for l in proc.stderr.splitlines() if not l.startswith("import time:")]
    self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
    self.assertLen(lines, 1, lines)
    self.assertRegex(lines[0], message)
    self.assertIn(f"{flag}={path}", lines[0])
    heavy = {l.rsplit("|", 1)[-1].strip() for l in proc.stderr.splitlines()
             if l.startswith("import time:")} & {"jax", "flax", "orbax"}
    self.assertEmpty(heavy)  # refused before the heavy imports: within 3 s
    self.assertEqual(_listing(top), before)  # nothing written

  @parameterized.parameters(*BINARIES)
  def test_a_file(self, module, flag):
    top = self.create_tempdir().full_path
    path = os.path.join(top, "results.txt")
    open(path, "w").close()
    self._check(module, flag, path, r"is a file, not a folder", top)

  @parameterized.parameters(*BINARIES)
  def test_under_a_file(self, module, flag):
    top = self.create_tempdir().full_path
    open(os.path.join(top, "notes"), "w").close()
    self._check(module, flag, os.path.join(top, "notes", "run"),
                r"lies under .*notes, which is a file", top)

  @parameterized.parameters(*BINARIES)
  def test_unwritable(self, module, flag):
    if os.geteuid() == 0:
      self.skipTest("root writes anywhere: the read-only filesystem case covers root")
    top = self.create_tempdir().full_path
    locked = os.path.join(top, "locked")
    os.mkdir(locked, 0o555)
    self._check(module, flag, os.path.join(locked, "run"), r"is not writable", top)

  @parameterized.parameters(*BINARIES)
  def test_read_only_filesystem(self, module, flag):
    mount = ReadOnlyMount()
    self.addCleanup(mount.close)
    if not mount.mounted:
      self.skipTest("cannot mount a read-only tmpfs here (needs root)")
    self._check(module, flag, os.path.join(mount.path, "run"), r"read-only filesystem",
                mount.path)


class CheckOutputFolderTest(absltest.TestCase):

  def test_accepts_new_and_existing_folders_and_writes_nothing(self):
    top = self.create_tempdir().full_path
    folders.check_output_folder(top)
    folders.check_output_folder(os.path.join(top, "a", "b", "c"))
    self.assertEqual(os.listdir(top), [])

  def test_empty(self):
    with self.assertRaisesRegex(folders.OutputFolderError, "--run_dir is empty"):
      folders.check_output_folder("", "--run_dir")


if __name__ == "__main__":
  absltest.main()
