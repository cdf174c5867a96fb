"""Logical axis names -> mesh shardings.

Parameters carry `logical_axes` metadata (see wegen_jax.layers.linear.param); activations
are annotated with `constrain(x, names)`. A rules table (a config field) maps each logical
name to a mesh axis, a tuple of mesh axes, or None (replicated). A dimension that a mesh
axis does not divide is replicated instead of failing, so tiny configs run on any mesh.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterable, Mapping, Sequence

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

# Parameters: FSDP over `embed`, tensor parallel over heads/mlp/vocab.
# Activations: batch over (data, fsdp); `act_*` names shard the non-batch dims.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  ("batch", ("data", "fsdp")),
  ("length", None),
  ("act_embed", None),
  ("act_heads", "tensor"),
  ("act_mlp", "tensor"),
  ("act_vocab", "tensor"),
  ("embed", "fsdp"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("mlp", "tensor"),
  ("vocab", "tensor"),
  ("channels", None),
  ("conv_in", None),
  ("conv_out", "fsdp"),
  ("norm", None),
)

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("wegen_sharding", default=None)


def rules_dict(rules: Iterable[Sequence] | Mapping | None) -> dict:
  if rules is None:
    return dict(DEFAULT_RULES)
  items = rules.items() if isinstance(rules, Mapping) else rules
  return {name: (tuple(t) if isinstance(t, list) else t) for name, t in items}


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int] | None, mesh, rules) -> PartitionSpec:
  """PartitionSpec for one array; replicates dims a mesh axis would not divide evenly."""
  rules = rules_dict(rules)
  used: set[str] = set()
  out = []
  for i, name in enumerate(axes):
    if name is None:
      out.append(None)
      continue
    if name not in rules:
      raise KeyError(
        f"logical axis {name!r} has no sharding rule; add it to the config's sharding rules (known: {sorted(rules)})"
      )
    target = rules[name]
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    targets = tuple(t for t in targets if t not in used and mesh.shape.get(t, 1) > 1)
    size = 1
    for t in targets:
      size *= mesh.shape[t]
    if not targets or (shape is not None and shape[i] % size):
      out.append(None)
      continue
    used.update(targets)
    out.append(targets[0] if len(targets) == 1 else targets)
  return PartitionSpec(*out)


def _variable_spec(var: nnx.Variable, mesh, rules) -> PartitionSpec:
  axes = var.get_metadata().get("logical_axes")
  value = var.get_value()
  if axes is None:
    return PartitionSpec()
  return logical_to_spec(axes, value.shape, mesh, rules)


def state_shardings(state, mesh, rules=None):
  """NamedSharding for every variable of an nnx State (or model)."""
  if isinstance(state, nnx.Module):
    state = nnx.state(state)
  return jax.tree.map(
    lambda v: v.replace(NamedSharding(mesh, _variable_spec(v, mesh, rules))),
    state,
    is_leaf=lambda x: isinstance(x, nnx.Variable),
  )


def shard_module(module: nnx.Module, mesh, rules=None) -> nnx.Module:
  """Moves every variable of `module` onto its sharding, in place; returns the module."""
  state = nnx.state(module)
  shardings = state_shardings(state, mesh, rules)
  nnx.update(module, jax.device_put(state, shardings))
  return module


@contextlib.contextmanager
def terse_tracer_errors():
  """Flax probes `getattr(value, 'sharding', None)` on every variable write; on a tracer jax
  answers with an AttributeError whose message scans the whole jaxpr, so tracing a model with
  thousands of parameters (WeGen-7B) is quadratic: minutes -> hours. Inside this context the
  message skips that scan (only the text of an error that is caught anyway changes)."""
  from jax._src.interpreters import partial_eval

  original = partial_eval.DynamicJaxprTracer._origin_msg
  partial_eval.DynamicJaxprTracer._origin_msg = lambda self: ""
  try:
    yield
  finally:
    partial_eval.DynamicJaxprTracer._origin_msg = original


def create_sharded(constructor: Callable[[], nnx.Module], mesh, rules=None) -> nnx.Module:
  """Builds a module directly into its shardings: the constructor runs under jit with
  out_shardings, so no device ever holds the whole model (7B does not fit on one chip)."""
  with terse_tracer_errors():  # WeGen-7B: seconds instead of tens of minutes of tracing
    abstract = nnx.eval_shape(constructor)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh, rules)
    state = jax.jit(lambda: nnx.split(constructor())[1], out_shardings=shardings)()
  return nnx.merge(graphdef, state)


@contextlib.contextmanager
def activation_sharding(mesh, rules=None):
  """Within this context `constrain` annotates activations for `mesh` with `rules`."""
  token = _ACTIVE.set((mesh, rules_dict(rules)))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def active_sharding():
  """(mesh, rules dict) of the enclosing `activation_sharding`, or None."""
  return _ACTIVE.get()


def batch_mesh_axes(rows: int):
  """The mesh axes a `rows`-long logical "batch" dimension shards over in the enclosing
  `activation_sharding` (None outside it, or where they would not divide it): vmap's
  `spmd_axis_name`, so that constraints inside a vmapped per-example model keep the mapped
  dimension batch-sharded instead of replicating it on every device."""
  active = _ACTIVE.get()
  if active is None:
    return None
  mesh, rules = active
  return logical_to_spec(("batch",), (rows,), mesh, rules)[0]


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """with_sharding_constraint by logical names; a no-op outside `activation_sharding`."""
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(axes, x.shape, mesh, rules)))
