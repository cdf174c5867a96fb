"""Orbax checkpoints that resume exactly, and refuse rather than lose a run.

One CheckpointManager step holds three items: `state` (parameters per component, optimizer
state; restored onto any mesh from an abstract target with shardings), `data` (the Grain
iterator state, JSON) and `config` (JSON, for humans, tools and the mismatch message). Saves are
async; only finalised steps are listed, so a run killed mid-save resumes from the previous one.

Every finalised step gets `DIGEST_FILE` (sha256 of each of its files, written by process 0 in
the background once the step is committed). Restoring the newest step:
  - a file that does not match its digest, or a step orbax cannot read, is real corruption: the
    step is moved aside to `<step>.unreadable` (`.unreadable.2`, ... when that exists; nothing
    is deleted) and the previous step is tried;
  - a readable step whose parameter tree or shapes differ from the model being trained is a
    changed config, not corruption: CheckpointMismatchError names the differing parameters and
    config fields, and nothing is moved.
A step the trainer finds bad after saving it (its parameters give a non-finite loss) is moved
to `<step>.nonfinite` (`discard`). docs/RELIABILITY.md lists the guarantees and their tests.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from wegen_jax.layers.paths import param_paths, path_string

log = logging.getLogger(__name__)

DIGEST_FILE = "wegen_digest.json"
# In a run directory that holds imported weights only (`convert import`: no optimizer state).
IMPORTED_FILE = "IMPORTED.json"
ITEMS = ("state", "data", "config")


class CheckpointMismatchError(ValueError):
  """The stored checkpoint was written for another model than the one the config builds."""


class CorruptCheckpointError(RuntimeError):
  """A checkpoint file does not match the digest written when the step was saved."""


def _manager(directory: Path, options: ocp.CheckpointManagerOptions | None = None) -> ocp.CheckpointManager:
  handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}
  handlers["config"] = ocp.JsonCheckpointHandler()
  return ocp.CheckpointManager(directory, options=options, item_names=ITEMS, item_handlers=handlers)


def file_sha256(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 23):
      h.update(chunk)
  return h.hexdigest()


def step_digest(step_dir: Path) -> dict[str, str]:
  """{relative path: sha256} of every file of a checkpoint step (the digest file excepted)."""
  files = sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != DIGEST_FILE)
  return {str(p.relative_to(step_dir)): file_sha256(p) for p in files}


def write_digest(step_dir: Path) -> None:
  digest = step_digest(step_dir)
  tmp = step_dir / (DIGEST_FILE + ".tmp")
  tmp.write_text(json.dumps({"sha256": digest}, indent=0, sort_keys=True))
  os.replace(tmp, step_dir / DIGEST_FILE)


def verify_digest(step_dir: Path) -> bool:
  """Raises CorruptCheckpointError naming the first file that differs; False when the step has
  no digest (saved by an older version, or killed between commit and digest), True when it matches."""
  stored_file = step_dir / DIGEST_FILE
  if not stored_file.exists():
    return False
  try:
    stored = json.loads(stored_file.read_text())["sha256"]
  except (ValueError, KeyError, TypeError) as e:
    raise CorruptCheckpointError(f"{stored_file} is not a digest file ({e})") from None
  now = step_digest(step_dir)
  for name in sorted(set(stored) | set(now)):
    if name not in now:
      raise CorruptCheckpointError(f"{step_dir / name} is missing")
    if name not in stored:
      raise CorruptCheckpointError(f"{step_dir / name} was not part of the saved step")
    if stored[name] != now[name]:
      raise CorruptCheckpointError(f"{step_dir / name} does not match its sha256 in {DIGEST_FILE}")
  return True


def _key(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _shapes(tree: Any) -> dict[str, tuple]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {".".join(_key(k) for k in path): tuple(leaf.shape) for path, leaf in flat}


def _flat_config(d: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(d, dict):
    return {prefix: d}
  out = {}
  for k, v in d.items():
    out.update(_flat_config(v, f"{prefix}.{k}" if prefix else str(k)))
  return out


def structure_differences(stored: Any, abstract: Any) -> list[str]:
  """Parameters (and optimizer leaves) present on one side only or with other shapes."""
  a, b = _shapes(stored), _shapes(abstract)
  out = [f"{k}: {a[k]} stored vs {b[k]} now" for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]
  out += [f"{k}: only in the checkpoint" for k in sorted(a.keys() - b.keys())]
  out += [f"{k}: not in the checkpoint" for k in sorted(b.keys() - a.keys())]
  return out


def config_differences(stored: Any, current: Any) -> list[str]:
  a, b = _flat_config(stored or {}), _flat_config(json.loads(json.dumps(current or {}, default=str)))
  missing = object()
  return [
    f"{k}: {a.get(k, '(absent)')!r} stored vs {b.get(k, '(absent)')!r} now"
    for k in sorted(a.keys() | b.keys())
    if a.get(k, missing) != b.get(k, missing)
  ]


class Checkpointer:
  def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self._manager = _manager(self.directory, options)
    self._async = async_save
    self._undigested: list[int] = []  # saved steps whose digest is not written yet
    self._hasher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ckpt-digest")
    self._hashing: list[concurrent.futures.Future] = []

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: Any = None, config: Any = None) -> None:
    args = {
      "state": ocp.args.StandardSave(state),
      "data": ocp.args.JsonSave(data_state if data_state is not None else {}),
      "config": ocp.args.JsonSave(json.loads(json.dumps(config, default=str)) if config else {}),
    }
    # An async save first waits for the previous one to commit: the steps queued before it are final now.
    self._manager.save(step, args=ocp.args.Composite(**args), force=True)
    finished, self._undigested = self._undigested, [step]
    if not self._async:
      finished, self._undigested = finished + [step], []
    self._digest(finished)

  def _digest(self, steps: list[int]) -> None:
    if jax.process_index() != 0:
      return
    for step in steps:
      self._hashing.append(self._hasher.submit(self._write_digest, step))

  def _write_digest(self, step: int) -> None:
    try:
      write_digest(self.directory / str(step))
    except FileNotFoundError:  # already rotated out by max_to_keep
      pass

  def restore_latest(self, abstract_state: Any, config: Any = None) -> tuple[int, Any, Any] | None:
    """(step, state, data_state) from the newest sound step, or None if there is none.

    abstract_state: pytree of jax.ShapeDtypeStruct (with .sharding to restore onto a mesh).
    config: the current config, to name the fields that differ when the model does not match."""
    self.wait()
    self._manager.reload()
    for step in reversed(self.all_steps()):
      step_dir = self.directory / str(step)
      try:
        if not verify_digest(step_dir):
          log.info("checkpoint step %d has no %s: restoring it unverified", step, DIGEST_FILE)
        stored = self._manager.item_metadata(step)["state"]
        if stored is None:
          raise CorruptCheckpointError(f"{step_dir / 'state'} has no readable metadata")
      except Exception as e:  # orbax raises many error types for damaged steps
        self._set_aside(step, e)
        continue
      differences = structure_differences(stored, abstract_state)
      if differences:
        raise CheckpointMismatchError(self._mismatch_message(step, differences, config))
      try:
        restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
        )
        return step, restored["state"], restored["data"]
      except Exception as e:
        self._set_aside(step, e)
    return None

  def stored_config(self, step: int) -> dict | None:
    try:
      return dict(self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])
    except Exception:
      return None

  def _mismatch_message(self, step: int, differences: list[str], config: Any) -> str:
    stored = self.stored_config(step)
    fields = config_differences(stored, config) if stored is not None and config is not None else []
    shown = lambda items: "; ".join(items[:8]) + (f"; ... ({len(items) - 8} more)" if len(items) > 8 else "")
    return (
      f"checkpoint step {step} in {self.directory} was written for another model than this config builds: "
      f"{len(differences)} parameter(s) differ ({shown(differences)}). "
      + (f"Config fields that differ from the stored config: {shown(fields)}. " if fields else "")
      + "Either rerun with the config this run was trained with, or start a new run in a new --workdir "
      f"(--config.init_from={self.directory.parent} copies components of this one). Nothing was changed."
    )

  def discard(self, step: int, reason: str) -> None:
    """Moves a saved step aside as `<step>.nonfinite` (it trained into a non-finite loss), so
    that a rerun resumes from the one before."""
    self.wait()
    aside = self._free_name(step, "nonfinite")
    log.warning("checkpoint step %d: %s; moved it to %s", step, reason, aside.name)
    if jax.process_index() == 0:
      os.replace(self.directory / str(step), aside)
    self._manager.reload()

  def _free_name(self, step: int, suffix: str) -> Path:
    aside = self.directory / f"{step}.{suffix}"
    n = 1
    while aside.exists():
      n += 1
      aside = self.directory / f"{step}.{suffix}.{n}"
    return aside

  def _set_aside(self, step: int, error: Exception) -> None:
    """Moves an unreadable step out of the way under a free name (kept for inspection, so the
    step can be written again), then rereads the step list."""
    aside = self._free_name(step, "unreadable")
    message = str(error).splitlines()[0][:300] if str(error) else ""
    log.warning(
      "checkpoint step %d in %s is unreadable (%s: %s); moved it to %s and trying the previous one",
      step,
      self.directory,
      type(error).__name__,
      message,
      aside.name,
    )
    if jax.process_index() == 0:
      os.replace(self.directory / str(step), aside)
    self._manager.reload()

  def wait(self) -> None:
    """Waits for pending saves to commit and their digests to be written."""
    self._manager.wait_until_finished()
    finished, self._undigested = self._undigested, []
    self._digest(finished)
    for future in self._hashing:
      future.result()
    self._hashing = []

  def close(self) -> None:
    self.wait()
    self._hasher.shutdown()
    self._manager.close()


def abstract_like(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """ShapeDtypeStruct tree for restoring into the layout of `tree` on `mesh`; leaves
  without a mesh sharding (optimizer step counts) are restored replicated."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def spec(x):
    sharding = getattr(x, "sharding", None)
    if not isinstance(sharding, jax.sharding.NamedSharding):
      sharding = replicated
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  return jax.tree.map(spec, tree)


def latest_parameters(directory: str | os.PathLike, step: int | None = None) -> tuple[int, dict[str, Any]]:
  """(step, {'layers.0.attn.q.kernel': array, ...}) of the newest (or the given) step of a training
  run, trainable and frozen parameters alike, as host arrays (no training mesh needed)."""
  directory = Path(directory).absolute()
  if not directory.is_dir():  # checked first: the manager would create it
    raise FileNotFoundError(f"no checkpoint directory {directory}: is the run directory right, and has it trained?")
  manager = _manager(
    directory, ocp.CheckpointManagerOptions(create=False, read_only=True, save_interval_steps=0, max_to_keep=None)
  )
  steps = sorted(manager.all_steps())
  if step is None:
    step = steps[-1] if steps else None
  if step is None:
    manager.close()
    raise FileNotFoundError(f"no checkpoint in {directory}: train the run first (or run the previous stage)")
  if step not in steps:
    manager.close()
    raise FileNotFoundError(f"{directory} has no step {step}; it has {steps}")
  try:
    verify_digest(directory / str(step))
  except CorruptCheckpointError:
    manager.close()
    raise
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  manager.close()
  flat = {}
  for part in ("params", "frozen"):
    for path, value in jax.tree_util.tree_flatten_with_path(state.get(part, {}))[0]:
      flat[path_string(path)] = value
  return step, flat


def load_run_parameters(
  model, run_dir: str | os.PathLike, *, step: int | None = None, prefixes: tuple[str, ...] | None = None
) -> int:
  """Sets the parameters of `model` (concrete or from nnx.eval_shape; those under `prefixes`, or
  all) from a training run's checkpoint; returns the step. Concrete parameters keep their
  sharding. One loader for stage-to-stage initialisation and for inference on a run."""
  step, saved = latest_parameters(Path(run_dir) / "checkpoints", step)
  copied = 0
  for path, var in param_paths(model).items():
    if prefixes is not None and path.split(".")[0] not in prefixes:
      continue
    if path not in saved:
      raise KeyError(f"{run_dir} (step {step}) has no parameter {path!r}: was it trained with this config?")
    current = var.get_value()
    if tuple(saved[path].shape) != tuple(current.shape):
      raise ValueError(f"{path}: shape {tuple(saved[path].shape)} in {run_dir} vs {tuple(current.shape)} here")
    sharding = getattr(current, "sharding", None)
    value = jax.numpy.asarray(saved[path], current.dtype)
    var.set_value(jax.device_put(value, sharding) if isinstance(sharding, jax.sharding.Sharding) else value)
    copied += 1
  if not copied:
    raise ValueError(f"no parameter of the model matched {prefixes} in {run_dir}")
  return step
