"""Orbax checkpoints that resume exactly: train state, data-iterator state and config.

One CheckpointManager step holds three items: `state` (parameters per component,
optimizer state, step, RNG key; restored onto any mesh from an abstract target with
shardings), `data` (the Grain iterator state, JSON) and `config` (JSON, for humans and
tools). Saves are async; only finalised steps are listed, so a run killed mid-save resumes
from the previous one. A latest step that cannot be read falls back to the one before,
with a warning (the unreadable step is renamed `<step>.unreadable`, not deleted).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from wegen_jax.layers.paths import param_paths, path_string

log = logging.getLogger(__name__)


class Checkpointer:
  def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data", "config"))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: Any = None, config: Any = None) -> None:
    args = {
      "state": ocp.args.StandardSave(state),
      "data": ocp.args.JsonSave(data_state if data_state is not None else {}),
      "config": ocp.args.JsonSave(json.loads(json.dumps(config, default=str)) if config else {}),
    }
    self._manager.save(step, args=ocp.args.Composite(**args), force=True)

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, Any] | None:
    """(step, state, data_state) from the newest readable step, or None if there is none.

    abstract_state: pytree of jax.ShapeDtypeStruct (with .sharding to restore onto a mesh)."""
    self._manager.wait_until_finished()
    self._manager.reload()
    for step in reversed(self.all_steps()):
      try:
        restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
        )
        return step, restored["state"], restored["data"]
      except Exception as e:  # a partial or corrupt step: orbax raises many error types
        # Kept for inspection under another name, so the step can be written again.
        aside = self.directory / f"{step}.unreadable"
        log.warning(
          "checkpoint step %d in %s is unreadable (%s: %s); moved it to %s and trying the previous one",
          step,
          self.directory,
          type(e).__name__,
          str(e).splitlines()[0][:200] if str(e) else "",
          aside.name,
        )
        if jax.process_index() == 0:
          os.replace(self.directory / str(step), aside)
        self._manager.reload()
    return None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
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
  manager = ocp.CheckpointManager(directory, item_names=("state", "data", "config"))
  steps = sorted(manager.all_steps())
  if step is None:
    step = steps[-1] if steps else None
  if step is None:
    manager.close()
    raise FileNotFoundError(f"no checkpoint in {directory}: train the run first (or run the previous stage)")
  if step not in steps:
    manager.close()
    raise FileNotFoundError(f"{directory} has no step {step}; it has {steps}")
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
