"""Name maps between our NNX parameter paths and PyTorch state-dict keys.

One table per model (MaxText's param_mapping style): each `Rule` pairs a path template of
ours with a key template of theirs (`{i}`, `{j}`, ... stand for integers) and a transform
that converts the tensor layout both ways. `load_state_dict` fills a model (concrete or
from `nnx.eval_shape`) and names every missing, extra or mis-shaped tensor;
`export_state_dict` inverts the table.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wegen_jax.convert.checkpoint_io import CheckpointError


@dataclasses.dataclass(frozen=True)
class Transform:
  to_jax: Callable[[np.ndarray], np.ndarray]
  to_torch: Callable[[np.ndarray], np.ndarray]


COPY = Transform(lambda x: x, lambda x: x)
LINEAR = Transform(lambda x: x.T, lambda x: x.T)                      # [out, in] <-> [in, out]
CONV = Transform(lambda x: x.transpose(2, 3, 1, 0), lambda x: x.transpose(3, 2, 0, 1))  # OIHW <-> HWIO


@dataclasses.dataclass(frozen=True)
class Rule:
  ours: str
  theirs: str
  transform: Transform = COPY


def _template_regex(template: str) -> re.Pattern:
  parts = re.split(r"(\{\w+\})", template)
  out = []
  for p in parts:
    if re.fullmatch(r"\{\w+\}", p):
      out.append(f"(?P<{p[1:-1]}>\\d+)")
    else:
      out.append(re.escape(p))
  return re.compile("^" + "".join(out) + "$")


def param_paths(model: nnx.Module) -> dict[str, nnx.Variable]:
  """'layers.0.attn.q.kernel' -> Variable for every parameter."""
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  return {".".join(str(p) for p in path): var for path, var in flat}


def match_rules(paths: Iterable[str], rules: Sequence[Rule]) -> dict[str, tuple[str, Transform]]:
  """our path -> (their key, transform); every path must match exactly one rule."""
  compiled = [(_template_regex(r.ours), r) for r in rules]
  out = {}
  for path in paths:
    for regex, rule in compiled:
      m = regex.match(path)
      if m:
        out[path] = (rule.theirs.format(**m.groupdict()), rule.transform)
        break
    else:
      raise CheckpointError(f"parameter {path!r} has no rule in the conversion table")
  return out


def load_state_dict(model: nnx.Module, state_dict: Mapping[str, np.ndarray], rules: Sequence[Rule], *,
                    ignore: Sequence[str] = (), strict: bool = True, dtype=None,
                    shardings: Mapping[str, jax.sharding.Sharding] | None = None,
                    source: str = "checkpoint") -> nnx.Module:
  """Fills `model`'s parameters from a PyTorch-layout state dict, in place.

  ignore: regexes of their keys that are expected and unused (e.g. rotary buffers).
  strict: unused keys not matched by `ignore` are an error (they usually mean a config
  mismatch). shardings: our path -> sharding, to place each tensor directly on devices.
  """
  variables = param_paths(model)
  table = match_rules(variables, rules)
  missing = sorted({k for k, _ in table.values() if k not in state_dict})
  if missing:
    raise CheckpointError(f"{source} lacks {len(missing)} tensor(s) the model needs, e.g. "
                          f"{missing[:5]}; is the config right for these weights?")
  for path, var in variables.items():
    key, transform = table[path]
    value = transform.to_jax(np.asarray(state_dict[key]))
    want = var.get_value().shape
    if tuple(value.shape) != tuple(want):
      raise CheckpointError(f"{source}: tensor {key!r} has shape {tuple(np.shape(state_dict[key]))}, "
                            f"which maps to {tuple(value.shape)} but parameter {path!r} is {tuple(want)}")
    target_dtype = dtype or var.get_value().dtype
    value = np.asarray(value).astype(target_dtype)
    array = jax.device_put(value, shardings[path]) if shardings and path in shardings else jnp.asarray(value)
    var.set_value(array)
  used = {k for k, _ in table.values()}
  patterns = [re.compile(p) for p in ignore]
  extra = sorted(k for k in state_dict if k not in used and not any(p.search(k) for p in patterns))
  if extra and strict:
    raise CheckpointError(f"{source} has {len(extra)} tensor(s) the model does not use, e.g. "
                          f"{extra[:5]}; check the config (or pass strict=False)")
  return model


def export_state_dict(model: nnx.Module, rules: Sequence[Rule], dtype=None) -> dict[str, np.ndarray]:
  """PyTorch-layout state dict (numpy) from `model`'s parameters."""
  variables = param_paths(model)
  table = match_rules(variables, rules)
  out = {}
  for path, var in variables.items():
    key, transform = table[path]
    value = np.asarray(jax.device_get(var.get_value()))
    if dtype is not None:
      value = value.astype(dtype)
    value = transform.to_torch(value)
    out[key] = np.ascontiguousarray(value).reshape(np.shape(value))  # keep 0-d tensors 0-d
  return out
