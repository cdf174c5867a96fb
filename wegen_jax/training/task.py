"""What the trainer needs from a system: the `Task` interface and the registry.

A task builds the model, says which parameters train (and their optimizer groups),
computes the loss, and provides the Grain dataset of host batches. The trainer does
everything else (sharding, optimizer, accumulation, checkpoints, metrics), so WeGen, GoT,
MGCC and the plain LM share one loop.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any, Mapping

import grain
import jax
from flax import nnx

from wegen_jax.training.validation import ConfigError

SYSTEMS_PACKAGE = "wegen_jax.systems"


class Task:
  """Base class; subclasses override what differs."""

  def __init__(self, config):
    self.config = config

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    raise NotImplementedError

  def check_config(self) -> None:
    """Raises training.validation.ConfigError for a config this system cannot train on (e.g. no
    dataset at data.dir), before the trainer builds anything (default: nothing to check)."""

  def init_pretrained(self, model: nnx.Module) -> None:
    """Fills parts of a freshly built (sharded) model from local weight files, in place; the
    trainer calls it when a run starts, not when it resumes (default: nothing)."""

  def init_components(self) -> tuple[str, ...]:
    """Top-level parts copied from the `config.init_from` run into a fresh run."""
    return tuple(self.config.get("init_components", ()))

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

  def trainable_rows(self, path: str) -> Any:
    """For a trainable parameter that trains only in part: a boolean array broadcastable to
    it, True where it trains (e.g. GILL's new `[IMG]` embedding rows); None = all of it."""
    return None

  def after_update(self, params: Any, step: jax.Array) -> Any:
    """Runs inside the jitted step on the updated trainable parameters (nnx State), e.g. to
    renormalise embedding rows; returns the parameters to keep (default: unchanged)."""
    return params

  def predict_fns(self, model: nnx.Module) -> dict:
    """The functions config.evals evaluators call during training, for this model (the
    system's System.predict_fns; every task has `validation_losses`)."""
    return {"validation_losses": validation_losses_fn(self, model)}

  # For tools.aot's analytic FLOPs (6 * N * tokens): the parameter-path prefix whose count is N
  # ("" = all trainable parameters, None = the estimate does not apply), and whether that
  # covers the whole model's work (else the compiled program's FLOPs are the basis).
  def token_params_prefix(self) -> str | None:
    return ""

  analytic_flops_cover_model = True

  def remat_summary(self) -> dict:
    """The rematerialisation settings of the model, for reports."""
    return {"model": self.config.model.get("remat")}


def known_systems() -> list[str]:
  package = importlib.import_module(SYSTEMS_PACKAGE)
  return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.ispkg)


def system_module(name: str):
  """`wegen_jax.systems.<name>` (config.task names it, as big_vision resolves models.<name>):
  a new system is a new package there, with no registry to edit."""
  if name not in known_systems():
    raise ConfigError(f"unknown task {name!r}: there is no package {SYSTEMS_PACKAGE}.{name}; known: {known_systems()}")
  return importlib.import_module(f"{SYSTEMS_PACKAGE}.{name}")


def get_task(config) -> Task:
  """The training task of `config.task` (the system package's `Task` class)."""
  return system_module(config.task).Task(config)


@functools.cache
def _loss_terms(task: Task):
  """The task's jitted loss and loss_* terms, one per task: the trainer asks for predict
  functions at every periodic eval, and this compiles once (graphdef static, state traced)."""

  def terms(graphdef, state, batch, rng):
    loss, metrics = task.loss_fn(nnx.merge(graphdef, state), batch, rng)
    return {"loss": loss, **{k: v for k, v in metrics.items() if k.startswith("loss")}}

  return jax.jit(terms, static_argnums=0)


def validation_losses_fn(task: Task, model: nnx.Module):
  """validation_losses(num_batches) -> the mean of the task's loss and loss_* metrics over the
  first `num_batches` batches of its validation split (fixed order and loss noise: the same
  figures for the same parameters). One process: the host batch is the whole batch."""
  graphdef, state = nnx.split(model)
  losses = _loss_terms(task)

  def validation_losses(num_batches: int) -> dict[str, float]:
    it = iter(task.dataset("validation", seed=0, global_batch=int(task.config.batch_size)))
    sums, seen = {}, 0
    for i in range(num_batches):
      try:
        batch = next(it)
      except StopIteration:
        break
      out = jax.device_get(losses(graphdef, state, jax.tree.map(jax.numpy.asarray, batch), jax.random.key(i)))
      for k, v in out.items():
        sums[k] = sums.get(k, 0.0) + float(v)
      seen += 1
    if not seen:
      raise ValueError("the validation split gave no batch: is the dataset's validation split empty?")
    return {**{k: v / seen for k, v in sums.items()}, "batches": float(seen)}

  return validation_losses
