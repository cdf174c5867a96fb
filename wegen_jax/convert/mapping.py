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
import warnings
from typing import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wegen_jax.convert.checkpoint_io import CheckpointError, NonFiniteWeightsWarning
from wegen_jax.layers.paths import param_paths


@dataclasses.dataclass(frozen=True)
class Transform:
  to_jax: Callable[[np.ndarray], np.ndarray]
  to_torch: Callable[[np.ndarray], np.ndarray]
  name: str = "copy"  # how the mapping tables (docs/CONVERT_TABLES.md) describe it


COPY = Transform(lambda x: x, lambda x: x)
LINEAR = Transform(lambda x: x.T, lambda x: x.T, "transpose [out, in] -> [in, out]")
CONV = Transform(lambda x: x.transpose(2, 3, 1, 0), lambda x: x.transpose(3, 2, 0, 1), "OIHW -> HWIO")


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


def load_state_dict(
  model: nnx.Module,
  state_dict: Mapping[str, np.ndarray],
  rules: Sequence[Rule],
  *,
  ignore: Sequence[str] = (),
  strict: bool = True,
  dtype=None,
  shardings: Mapping[str, jax.sharding.Sharding] | None = None,
  source: str = "checkpoint",
  on_mismatch: str = "error",
  grow: Mapping[str, int] | None = None,
) -> nnx.Module:
  """Fills `model`'s parameters from a PyTorch-layout state dict, in place.

  ignore: regexes of their keys that are expected and unused (e.g. rotary buffers).
  strict: unused keys not matched by `ignore` are an error (they usually mean a config
  mismatch). shardings: our path -> sharding, to place each tensor directly on devices
  (default: where the parameter already lives, for a concrete model).
  on_mismatch: "error", or "keep_init" to leave a parameter whose tensor has another shape at
  its current (fresh) value, as diffusers' ignore_mismatched_sizes=True does (e.g. SDXL's
  cross-attention keys when the condition width changes); each one is printed.
  grow: regex of our path -> axis along which the checkpoint may be smaller: its tensor fills
  the leading entries and the rest keep their current values (a vocabulary extended with new
  tokens, as HF resize_token_embeddings).
  Tensors with NaN/inf values (after the cast to the parameter dtype) are loaded as they are,
  with one NonFiniteWeightsWarning naming each and its count.
  """
  if on_mismatch not in ("error", "keep_init"):
    raise ValueError(f"on_mismatch={on_mismatch!r}; choose 'error' or 'keep_init'")
  grow = [(re.compile(k), axis) for k, axis in (grow or {}).items()]
  variables = param_paths(model)
  table = match_rules(variables, rules)
  nonfinite = {}
  missing = sorted({k for k, _ in table.values() if k not in state_dict})
  if missing:
    raise CheckpointError(
      f"{source} lacks {len(missing)} tensor(s) the model needs, e.g. "
      f"{missing[:5]}; is the config right for these weights?"
    )
  for path, var in variables.items():
    key, transform = table[path]
    value = transform.to_jax(np.asarray(state_dict[key]))
    want = var.get_value().shape
    target_dtype = dtype or var.get_value().dtype
    if tuple(value.shape) != tuple(want):
      axis = next((a for regex, a in grow if regex.search(path)), None)
      if axis is not None and _grows_along(value.shape, want, axis):
        print(
          f"{source}: {key!r} fills the first {value.shape[axis]} of {want[axis]} entries of {path!r} "
          f"(axis {axis}); the rest keep their initial values",
          flush=True,
        )
        value = _fill_leading(np.asarray(var.get_value()).astype(target_dtype), np.asarray(value), axis)
      elif on_mismatch == "keep_init":
        print(
          f"{source}: {key!r} {tuple(value.shape)} does not fit {path!r} {tuple(want)}: kept at its initial value",
          flush=True,
        )
        continue
      else:
        raise CheckpointError(
          f"{source}: tensor {key!r} has shape {tuple(np.shape(state_dict[key]))}, "
          f"which maps to {tuple(value.shape)} but parameter {path!r} is {tuple(want)}"
        )
    value = np.asarray(value).astype(target_dtype)
    bad = _nonfinite_count(value)
    if bad:
      nonfinite[key] = (bad, value.size)
    current = var.get_value()
    if shardings and path in shardings:
      array = jax.device_put(value, shardings[path])
    elif isinstance(current, jax.Array):  # a concrete model keeps each parameter's placement
      array = jax.device_put(value, current.sharding)
    else:
      array = jnp.asarray(value)
    var.set_value(array)
  if nonfinite:
    names = ", ".join(f"{k!r} ({n} of {size} values)" for k, (n, size) in list(nonfinite.items())[:10])
    more = f" and {len(nonfinite) - 10} more" if len(nonfinite) > 10 else ""
    warnings.warn(
      f"{source}: {len(nonfinite)} tensor(s) hold non-finite values (NaN/inf): {names}{more}",
      NonFiniteWeightsWarning,
      stacklevel=2,
    )
  used = {k for k, _ in table.values()}
  patterns = [re.compile(p) for p in ignore]
  extra = sorted(k for k in state_dict if k not in used and not any(p.search(k) for p in patterns))
  if extra and strict:
    raise CheckpointError(
      f"{source} has {len(extra)} tensor(s) the model does not use, e.g. "
      f"{extra[:5]}; check the config (or pass strict=False)"
    )
  return model


def _nonfinite_count(a: np.ndarray) -> int:
  """How many entries of a are NaN or inf (0 for integer and bool arrays)."""
  if a.dtype.kind in "biu":
    return 0
  try:
    return int(a.size - np.count_nonzero(np.isfinite(a)))
  except TypeError:  # a dtype without isfinite
    return 0


def _grows_along(have, want, axis: int) -> bool:
  axis %= len(want)
  return (
    len(have) == len(want)
    and have[axis] < want[axis]
    and all(h == w for i, (h, w) in enumerate(zip(have, want)) if i != axis)
  )


def _fill_leading(current: np.ndarray, value: np.ndarray, axis: int) -> np.ndarray:
  index = [slice(None)] * current.ndim
  index[axis] = slice(0, value.shape[axis])
  current[tuple(index)] = value
  return current


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


def rules_table(rules: Sequence[Rule]) -> str:
  """A Markdown table of a conversion table: our parameter path, their key, the transform
  (`{i}`, `{j}`, ... stand for block indices)."""
  rows = ["| wegen_jax parameter | PyTorch key | transform |", "|---|---|---|"]
  rows += [f"| `{r.ours}` | `{r.theirs}` | {r.transform.name} |" for r in rules]
  return "\n".join(rows) + "\n"


def param_shardings(model: nnx.Module, mesh, rules=None) -> dict[str, jax.sharding.NamedSharding] | None:
  """{dotted path: NamedSharding} for every parameter of `model` on `mesh` (None without a mesh), so
  loaders put each tensor straight onto its sharding (no full host copy on device 0)."""
  if mesh is None:
    return None
  from wegen_jax.layers.paths import param_paths
  from wegen_jax.parallel.sharding import logical_to_spec

  return {
    p: jax.sharding.NamedSharding(
      mesh, logical_to_spec(v.get_metadata()["logical_axes"], v.get_value().shape, mesh, rules)
    )
    for p, v in param_paths(model).items()
  }
