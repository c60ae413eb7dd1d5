"""Shared entry point: bad flags or inputs become one line on stderr and exit code 2."""

from __future__ import annotations

import importlib
import logging as std_logging
import os
import re
import signal
import sys
from typing import Callable

from absl import app, flags
from absl import logging as absl_logging

from flatl2o import folders

USAGE_ERROR = 2

_DETERMINISTIC = flags.DEFINE_bool(
    "deterministic", False, "Deterministic GPU kernels (XLA's --xla_gpu_deterministic_ops): "
    "the same command then gives bit-identical results on the same GPU, somewhat slower. "
    "CPU runs are deterministic without it.")

_IMPORT = flags.DEFINE_list(
    "import", [], "Python modules to import before anything else (comma-separated): a "
    "user's flatness terms, learned optimizers or tasks, registered with "
    "flatl2o.meta.terms.register, flatl2o.optimizers.register or flatl2o.tasks.register "
    "when the module is imported; e.g. --import=my_terms for my_terms.py in the current "
    "folder.")


safe_name = folders.safe_name  # `text` as one folder name (the library's)


def fail(message: str) -> None:
  prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "flatl2o"
  sys.stderr.write(f"{prog}: error: {message}\n")
  sys.exit(USAGE_ERROR)


def check_output_folder(flag: str, path: str) -> None:
  """A run's output folder, checked before any work (`folders.check_output_folder`):
  a file, a path under a file, an unwritable or read-only place exit 2 with one line."""
  folders.check_output_folder(path, flag)


def import_modules(modules: list[str]) -> None:
  """Imports `--import` modules (the current folder first on the path, as `python -m` has it).

  Args:
    modules: module names.

  Raises:
    ValueError: one line naming the module and why it could not be imported
      (not found, a registration it refused, or any error inside it).
  """
  if os.getcwd() not in sys.path and "" not in sys.path:
    sys.path.insert(0, os.getcwd())
  for module in modules:
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      missing = e.name or module
      raise ValueError(f"--import={module}: no module named {missing!r} (looked in the current "
                       "folder and on PYTHONPATH; give a module name, e.g. my_terms for "
                       "./my_terms.py)") from None
    except Exception as e:  # pylint: disable=broad-except  (a user's module: any error, one line)
      first = str(e).splitlines()[0] if str(e) else ""
      raise ValueError(f"--import={module} failed: {type(e).__name__}: {first}") from None


# Name flags whose accepted values a --import module may extend: (holder, built-in names,
# "module:function" listing the registry's names).
_NAME_FLAGS: list[tuple[flags.FlagHolder, tuple[str, ...], str]] = []


def name_flag(name: str, default: str, builtin: tuple[str, ...], registry: str,
              help_text: str) -> flags.FlagHolder:
  """A flag naming a registered thing: the built-ins, or a name a `--import` module registers.

  Args:
    name: the flag's name.
    default: its default (a built-in).
    builtin: the built-in names (checked before anything imports JAX).
    registry: 'module:function' returning every registered name (consulted only
      when the value is not a built-in and `--import` was given).
    help_text: the flag's help; the accepted names are added to it.

  Returns:
    The flag's holder.
  """
  holder = flags.DEFINE_string(name, default, f"{help_text} One of {', '.join(builtin)}, or a "
                               "name registered by an --import module.")
  _NAME_FLAGS.append((holder, builtin, registry))
  return holder


def _check_names(imported: bool) -> None:
  for holder, builtin, registry in _NAME_FLAGS:
    if holder.value in builtin:
      continue
    accepted = builtin
    if imported:
      module, function = registry.split(":")
      accepted = tuple(getattr(importlib.import_module(module), function)())
      if holder.value in accepted:
        continue
    raise ValueError(f"unknown --{holder.name}={holder.value}; accepted: {', '.join(accepted)}"
                     + ("" if imported else " (or a name registered by an --import module)"))


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).replace("\n", " "))
  except (KeyError, AttributeError) as e:
    # ml_collections' --config.FIELD parsing raises these for fields it cannot set.
    fail(str(e.args[0] if e.args else e).replace("\n", " "))
  if len(rest) > 1:
    fail(f"unexpected positional arguments {rest[1:]}; all options are --flags")
  return rest


def _drop_library_info(record: std_logging.LogRecord) -> bool:
  noisy = ("/orbax/", "/tensorflow_datasets/", "/etils/")
  return record.levelno >= std_logging.WARNING or not any(n in record.pathname for n in noisy)


def run(main: Callable[[list[str]], None]) -> None:
  """`app.run(main)`, turning flag errors and `ValueError`s into one line and exit 2."""
  # JAX logs at INFO that it found no TPU, and orbax logs every file it writes:
  # noise that would bury the progress lines.
  std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)
  absl_logging.get_absl_handler().addFilter(_drop_library_info)

  def guarded_main(argv):
    if _DETERMINISTIC.value:
      use_deterministic_kernels()
    try:
      import_modules(_IMPORT.value)
      _check_names(imported=bool(_IMPORT.value))
      main(argv)
    except ValueError as e:
      fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except KeyboardInterrupt:
      # Outputs are written atomically at the end, and meta-training checkpoints
      # on the first Ctrl-C; an abort leaves nothing half-written to explain.
      prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "flatl2o"
      sys.stderr.write(f"{prog}: interrupted; results not yet written were dropped "
                       "(checkpoints already saved are kept)\n")
      sys.exit(128 + signal.SIGINT)

  app.run(guarded_main, flags_parser=_parse_flags)


class StopRequests:
  """SIGINT / SIGTERM as a flag the trainer polls between meta-steps.

  The first signal is recorded, silently (`requested()` turns True; the run
  checkpoints and stops after the current meta-step, and `exit` prints the one
  line a Ctrl-C gives); a second SIGINT raises KeyboardInterrupt as usual, for
  whoever cannot wait for that step.
  """

  def __init__(self):
    self.signum = None
    for signum in (signal.SIGINT, signal.SIGTERM):
      signal.signal(signum, self._record)

  def _record(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def requested(self) -> bool:
    return self.signum is not None

  def exit(self, message: str) -> None:
    """Prints `message` on one line and exits 128 + the signal (130 SIGINT, 143 SIGTERM)."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "flatl2o"
    sys.stderr.write(f"{prog}: {message}\n")
    sys.exit(128 + (self.signum or signal.SIGINT))


def use_deterministic_kernels() -> None:
  """Asks XLA for deterministic GPU kernels; must run before JAX starts its backend."""
  flag = "--xla_gpu_deterministic_ops=true"
  current = os.environ.get("XLA_FLAGS", "")
  if flag not in current:
    os.environ["XLA_FLAGS"] = f"{current} {flag}".strip()


def initialize_distributed(coordinator_address: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
  """Joins a multi-host run (`jax.distributed.initialize`) when an address is given.

  Must run before anything starts JAX's backend. Raises ValueError (exit 2) on
  an incomplete or inconsistent set of settings.
  """
  given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
           "--process_id": process_id}
  if all(v is None for v in given.values()):
    return
  missing = [k for k, v in given.items() if v is None]
  if missing:
    raise ValueError(f"a multi-host run needs --coordinator_address, --num_processes and "
                     f"--process_id together; missing {', '.join(missing)}")
  if not re.fullmatch(r"[^\s:]+:\d+", coordinator_address):
    raise ValueError(f"--coordinator_address must be HOST:PORT (process 0's), got "
                     f"{coordinator_address!r}")
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id must be in 0..{num_processes - 1} for --num_processes="
                     f"{num_processes}, got {process_id}")
  import jax  # pylint: disable=g-import-not-at-top
  # CPU processes talk through gloo; GPU and TPU backends bring their own collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def progress_line(total: int):
  """A meta_train callback that logs one progress line (with an ETA) per logged meta-step."""
  from flatl2o.meta import trainer  # pylint: disable=g-import-not-at-top
  return trainer.progress_printer(total, absl_logging.info)
