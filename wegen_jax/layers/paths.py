"""Dotted parameter paths ('layers.0.attn.q.kernel'): one spelling for converters, the trainer and
checkpoints, whether the tree is an NNX module or a pytree of arrays (nnx State, restored state)."""

from __future__ import annotations

from typing import Any, Sequence

from flax import nnx


def path_string(path: Sequence[Any]) -> str:
  """A jax key path or an nnx path tuple -> 'a.0.b'; a trailing '.value' of nnx Variables is dropped."""
  keys = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
  if keys and keys[-1] == "value":
    keys = keys[:-1]
  return ".".join(keys)


def param_paths(model: nnx.Module) -> dict[str, nnx.Variable]:
  """'layers.0.attn.q.kernel' -> Variable for every parameter."""
  return {path_string(path): var for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
