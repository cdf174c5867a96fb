"""What the trainer needs from a system: the `Task` interface and the registry.

A task builds the model, says which parameters train (and their optimizer groups),
computes the loss, and provides the Grain dataset of host batches. The trainer does
everything else (sharding, optimizer, accumulation, checkpoints, metrics), so WeGen, GoT,
MGCC and the plain LM share one loop.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

import grain
import jax
from flax import nnx

TASKS = {
  "lm": "wegen_jax.training.lm_task:LMTask",
  "wegen": "wegen_jax.systems.wegen.task:WeGenTask",
}


class Task:
  """Base class; subclasses override what differs."""

  def __init__(self, config):
    self.config = config

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    raise NotImplementedError

  def init_pretrained(self, model: nnx.Module) -> None:
    """Fills parts of a freshly built (sharded) model from local weight files, in place; the
    trainer calls it when a run starts, not when it resumes (default: nothing)."""

  def trainable(self) -> Any:
    """nnx filter of the trainable parameters (default: all)."""
    return nnx.Param

  def param_group(self, path: str) -> str:
    """Optimizer group of a trainable parameter (used by optimizer.freeze_until)."""
    return path.split(".")[0]

  def loss_fn(self, model: nnx.Module, batch: Mapping[str, jax.Array], rng: jax.Array):
    """-> (scalar loss, dict of scalar metrics, e.g. the loss terms)."""
    raise NotImplementedError

  def dataset(self, split: str, *, seed: int, global_batch: int) -> grain.IterDataset:
    """This process's rows of each global batch, as dicts of numpy arrays."""
    raise NotImplementedError

  def batch_counts(self, batch: Mapping[str, Any]) -> dict[str, float]:
    """Work in one global batch, for throughput: e.g. {'tokens': ..., 'images': ...}."""
    return {}

  def batch_spec(self, global_batch: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shape and dtype of each field of one global batch (ahead-of-time compilation needs no data)."""
    raise NotImplementedError(f"{type(self).__name__} does not describe its batch shapes (batch_spec)")

  def batch_axes(self, name: str) -> tuple:
    """Logical axes of a batch field (default: batch-sharded first dim)."""
    return ("batch",)


def get_task(config) -> Task:
  name = config.task
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
  module, cls = TASKS[name].split(":")
  return getattr(importlib.import_module(module), cls)(config)
