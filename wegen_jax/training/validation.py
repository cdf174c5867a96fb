"""Checks of a training config and workdir that run before anything is built or compiled.

Each failure is one ConfigError whose message says what is wrong and what to do; the train
entry point prints it as one line and exits 2. System-specific checks (e.g. that data.dir holds
a dataset) are the task's `check_config`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from wegen_jax.training.checkpointing import IMPORTED_FILE


class ConfigError(ValueError):
  """A config value or path that cannot work; the message says how to fix it."""


def _positive_int(config, name: str, what: str) -> None:
  value = config.get(name)
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ConfigError(f"config.{name}={value!r}: {what} must be a whole number >= 1")


def _writable_dir(path: Path, what: str) -> None:
  if path.exists() and not path.is_dir():
    raise ConfigError(f"{what} {path} is a file, not a directory: pass a directory path")
  existing = path
  while not existing.exists():  # the nearest existing ancestor is where it will be created
    existing = existing.parent
  try:  # a real write: permission bits do not tell for root or read-only mounts
    fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise ConfigError(f"{what} {path} is not writable ({existing}: {e.strerror}): choose another") from None


def check_training_config(config, workdir: str | os.PathLike) -> None:
  total = config.get("total_steps")
  if not isinstance(total, int) or isinstance(total, bool) or total < 0:
    raise ConfigError(f"config.total_steps={total!r}: the number of steps to train must be a whole number >= 0")
  _positive_int(config, "log_every", "the logging interval (steps)")
  _positive_int(config, "ckpt_every", "the checkpoint interval (steps)")
  _positive_int(config, "batch_size", "the global batch size")
  if config.get("keep_checkpoints", 3) is not None and config.get("keep_checkpoints", 3) < 1:
    raise ConfigError(f"config.keep_checkpoints={config.keep_checkpoints!r}: keep at least 1 checkpoint")
  accum = config.get("grad_accum", 1)
  if not isinstance(accum, int) or accum < 1 or config.batch_size % accum:
    raise ConfigError(
      f"config.grad_accum={accum!r} must be >= 1 and divide config.batch_size={config.batch_size} into micro-batches"
    )
  _writable_dir(Path(workdir), "workdir")
  if (Path(workdir) / IMPORTED_FILE).exists():
    raise ConfigError(
      f"--workdir {workdir} holds imported weights ({IMPORTED_FILE}), not a training state to resume: train a new "
      f"run from them with --workdir NEW_DIR --config.init_from={workdir} (and config.init_components)"
    )
  init_from = config.get("init_from")
  if init_from:
    checkpoints = Path(init_from) / "checkpoints"
    if not checkpoints.is_dir() or not any(p.name.isdigit() for p in checkpoints.iterdir()):
      raise ConfigError(
        f"config.init_from={init_from}: no checkpoint there (expected {checkpoints}/<step>): "
        "train that run first (e.g. the previous stage) or fix the path"
      )
