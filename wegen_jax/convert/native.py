"""wegen_jax's own checkpoint format for converted models: an Orbax tree plus the config.

DIR/wegen_model.json  {"kind": "llm", "config": {...LLMConfig fields...}}
DIR/params/           Orbax (tensorstore) parameter tree; restores onto any mesh.
Training checkpoints (CheckpointManager) store the same parameter tree per component.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable

import jax
import orbax.checkpoint as ocp
from flax import nnx

from wegen_jax.convert.checkpoint_io import CheckpointError
from wegen_jax.models.llm import LLM, LLMConfig

# kind -> (config class, model class); other backbones register themselves here.
KINDS: dict[str, tuple[type, Callable]] = {"llm": (LLMConfig, LLM)}


def register_kind(kind: str, config_cls: type, model_cls: Callable) -> None:
  KINDS[kind] = (config_cls, model_cls)


def _kind_of(model) -> str:
  for kind, (_, cls) in KINDS.items():
    if isinstance(model, cls):
      return kind
  raise CheckpointError(f"no native checkpoint kind registered for {type(model).__name__}")


def save_native(model: nnx.Module, directory: str | os.PathLike) -> None:
  directory = Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  config = dataclasses.asdict(model.cfg)
  (directory / "wegen_model.json").write_text(
    json.dumps({"kind": _kind_of(model), "config": config}, indent=2, default=list)
  )
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(directory / "params", nnx.to_pure_dict(nnx.state(model, nnx.Param)), force=True)


def load_native(directory: str | os.PathLike, shardings_fn: Callable | None = None, **overrides):
  """Model from `save_native`'s directory. shardings_fn(abstract_model) -> pure-dict tree of
  shardings places parameters directly on a mesh."""
  directory = Path(directory).absolute()
  meta_file = directory / "wegen_model.json"
  if not meta_file.is_file():
    raise CheckpointError(f"{directory} is not a wegen_jax checkpoint: {meta_file.name} is missing")
  meta = json.loads(meta_file.read_text())
  if meta["kind"] not in KINDS:
    raise CheckpointError(f"{meta_file}: unknown kind {meta['kind']!r}; known: {sorted(KINDS)}")
  config_cls, model_cls = KINDS[meta["kind"]]
  cfg = config_cls(**{**meta["config"], **overrides})
  abstract = nnx.eval_shape(lambda: model_cls(cfg, rngs=nnx.Rngs(0)))
  target = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
  if shardings_fn is not None:
    target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), target, shardings_fn(abstract)
    )
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(directory / "params", target)
  graphdef, state = nnx.split(abstract)
  nnx.replace_by_pure_dict(state, restored)
  return nnx.merge(graphdef, state)
