"""What every entry point that runs a trained model needs from a system: the `System` interface.

The trainer sees a system through its `Task` (training/task.py); demo, sample, eval and chat see
it through its `System`: load a training run or released weights, generate, and the predict
functions evaluators call. `wegen_jax.systems.<name>` exposes both (`Task`, `System`), and
`config.task` names the package, so a new system is a new package and nothing else changes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from flax import nnx


@dataclasses.dataclass
class Request:
  """One generation request: the user's text, input images (uint8 [H, W, 3]: references or an
  earlier result to refine), earlier turns, and per-request options."""

  text: str
  images: Sequence[np.ndarray] = ()
  history: Sequence["Turn"] = ()
  num_samples: int = 1
  seed: int = 0
  options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Turn:
  """A finished turn of a conversation, as the model saw and answered it."""

  text: str
  images: Sequence[np.ndarray] = ()
  reply_text: str = ""
  reply_images: Sequence[np.ndarray] = ()


@dataclasses.dataclass
class Response:
  """What the model answered: text and generated images (uint8 [H, W, 3])."""

  text: str
  images: list[np.ndarray]
  extras: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Sample:
  """A held-out example continued by the model, for demos, sample grids and metrics."""

  text: str
  inputs: list[np.ndarray]
  target: np.ndarray | None
  generated: np.ndarray | None
  record: dict = dataclasses.field(default_factory=dict)


class System:
  """A trained model of one system and the config it was built from (subclass per system)."""

  def __init__(self, config, model: nnx.Module):
    self.config = config
    self.model = model

  @classmethod
  def build_model(cls, config) -> nnx.Module:
    """The model with abstract parameters (nnx.eval_shape): no memory until weights are set."""
    from wegen_jax.training.task import get_task

    task = get_task(config)
    return nnx.eval_shape(lambda: task.build_model(nnx.Rngs(config.get("seed", 0))))

  @classmethod
  def from_run(cls, config, workdir: str | Path, step: int | None = None) -> "System":
    """The newest (or the given) checkpoint of a training run in `workdir`."""
    from wegen_jax.training.checkpointing import load_run_parameters

    model = cls.build_model(config)
    loaded = load_run_parameters(model, workdir, step=step)
    system = cls(config, model)
    system.step = loaded
    return system

  @classmethod
  def from_pretrained(cls, config) -> "System":
    """Released weights named in `config.pretrained` (local files), without a training run."""
    from wegen_jax.training.task import get_task

    task = get_task(config)
    model = task.build_model(nnx.Rngs(config.get("seed", 0)))
    task.init_pretrained(model)
    system = cls(config, model)
    system.step = 0
    return system

  step: int | None = None

  # PyTorch layouts this system exports and imports (`python -m wegen_jax.convert export|import`,
  # convert/runs.py); the tables that map its parameters live in its package.
  export_layouts: tuple[str, ...] = ()

  def export_pytorch(self, out: Path, *, layout: str, dtype=None) -> list[str]:
    """Writes every component into the folder `out` (exists, empty); returns the parts written."""
    raise NotImplementedError(f"{type(self).__name__} has no PyTorch export")

  @classmethod
  def mapping_tables(cls, config) -> str:
    """Markdown tables of every parameter's PyTorch key and transform (docs/CONVERT_TABLES.md)."""
    raise NotImplementedError(f"{cls.__name__} has no conversion tables")

  @classmethod
  def import_pytorch(cls, config, src: Path) -> tuple[nnx.Module, list[str]]:
    """(model with every parameter from the files in `src`, the parts read) for `config`."""
    raise NotImplementedError(f"{cls.__name__} has no PyTorch import")

  def generate(self, requests: Sequence[Request]) -> list[Response]:
    """Answers each request (text and/or images)."""
    raise NotImplementedError(f"{type(self).__name__} does not generate")

  def validation_samples(self, num: int, seed: int = 0) -> list[Sample]:
    """`num` held-out examples of the run's validation data, continued by the model."""
    raise NotImplementedError(f"{type(self).__name__} has no validation samples")

  def predict_fns(self) -> dict[str, Callable[..., Any]]:
    """The functions evaluators call (wegen_jax/evaluators): by name, those this system has.

    generate_images(prompts: list[dict], rng_seed: int) -> list of uint8 [H, W, 3], one per
      prompt; a prompt has 'text' and optionally 'images' (uint8 context images, in order)
    reconstruct_images(images, seed) -> the images redrawn from their own features (a detokenizer)
    validation_pairs(num) -> dicts with text, source, target and ground truth (dynamics data)
    validation_images(num) -> uint8 held-out frames
    heldout_tokens(num) / score_tokens(rows) -> token rows; (sum of token NLL, number of tokens)
    """
    return {}


def load_pretrained_parts(model, paths: Mapping[str, str], loaders: Mapping[str, Callable]) -> list[str]:
  """Fills the parts of `model` named in `paths` (config.pretrained: part -> local path; empty
  entries skipped) with `loaders[part](model, path)`, in the loaders' order (later parts overwrite
  earlier ones); returns the parts loaded. Unknown parts and missing paths are one clear error."""
  from wegen_jax.convert.checkpoint_io import CheckpointError

  unknown = sorted(set(paths) - set(loaders))
  if unknown:
    raise ValueError(f"config.pretrained has unknown entries {unknown}; known: {list(loaders)}")
  loaded = []
  for name, load in loaders.items():
    path = paths.get(name) or ""
    if not path:
      continue
    if not Path(path).exists():
      raise CheckpointError(
        f"config.pretrained.{name} = {path!r} does not exist; point it at a local copy of the weights "
        "(nothing is downloaded)"
      )
    load(model, path)
    print(f"loaded pretrained {name} from {path}", flush=True)
    loaded.append(name)
  return loaded


def get_system(config) -> type[System]:
  """The System class of `config.task` (`wegen_jax.systems.<task>.System`)."""
  from wegen_jax.training.task import system_module

  module = system_module(config.task)
  if not hasattr(module, "System"):
    raise ValueError(f"system {config.task!r} has no inference interface (wegen_jax.systems.{config.task}.System)")
  return module.System
