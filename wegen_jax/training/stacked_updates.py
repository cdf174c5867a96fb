"""Run an optimizer on stacks of equal-shape parameters instead of on each one.

Scanned layer stacks keep their parameters per layer (layers/scan.py), so a 3B MLLM with LoRA
and an SDXL UNet has ~2,300 trainable leaves, and every optax transformation (clipping, Adam's
moments, weight decay, the schedule's scaling) becomes ~2,300 small elementwise programs: the
lowered GoT-3B step was 145k lines, mostly those, and XLA's TPU compile of it ran out of a
23 GB host (docs/SCALING.md). Leaves of one shape, dtype, sharding and group label (the 36
layers' q-projection LoRA factors) are stacked into one array before the inner optimizer and
sliced back after it, so the optimizer's program grows with the number of distinct shapes.

The result is the same as the unstacked optimizer's for element-wise transformations and for
global reductions (clip_by_global_norm sums the same squares); the optimizer state is stored
stacked, which is a different checkpoint layout (so `optimizer.stack_leaves` is a config choice
made when a run starts).
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec


class StackPlan(NamedTuple):
  """Which leaves go into which stack: `groups[k]` lists leaf indices (in tree-flatten order)
  of stack `names[k]`; `keys[k]` is that stack's per-leaf key (group label, sharding...)."""

  treedef: Any
  names: tuple[str, ...]
  groups: tuple[tuple[int, ...], ...]
  keys: tuple[Hashable, ...]
  shapes: tuple[tuple[int, ...], ...]


def plan_stacks(params, leaf_keys=None) -> StackPlan:
  """Groups params' leaves by (shape, dtype, leaf key). leaf_keys: one hashable per leaf in
  tree-flatten order (None: shape and dtype only)."""
  leaves, treedef = jax.tree.flatten(params)
  keys = [None] * len(leaves) if leaf_keys is None else list(leaf_keys)
  if len(keys) != len(leaves):
    raise ValueError(f"plan_stacks: {len(keys)} leaf keys for {len(leaves)} leaves")
  groups: dict[tuple, list[int]] = {}
  for i, (leaf, key) in enumerate(zip(leaves, keys)):
    groups.setdefault((tuple(leaf.shape), jnp.dtype(leaf.dtype).name, key), []).append(i)
  names = tuple(
    f"{k:04d}_{dtype}_{'x'.join(map(str, shape)) or 'scalar'}" for k, (shape, dtype, _) in enumerate(groups)
  )
  return StackPlan(
    treedef,
    names,
    tuple(tuple(g) for g in groups.values()),
    tuple(key for _, _, key in groups),
    tuple(shape for shape, _, _ in groups),
  )


def stacked_sharding(sharding):
  """A member's NamedSharding with the stack axis in front, unsharded (None otherwise)."""
  if isinstance(sharding, NamedSharding):
    return NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))
  return None


def stack(plan: StackPlan, tree, shardings=None) -> dict[str, jax.Array]:
  """{stack name: [members, *shape]}; shardings: per stack (None = leave it to XLA)."""
  leaves = plan.treedef.flatten_up_to(tree)
  out = {}
  for k, (name, group) in enumerate(zip(plan.names, plan.groups)):
    x = jnp.stack([leaves[i] for i in group])
    if shardings is not None and shardings[k] is not None:
      x = jax.lax.with_sharding_constraint(x, shardings[k])
    out[name] = x
  return out


def unstack(plan: StackPlan, stacked: dict[str, jax.Array]):
  leaves: list[Any] = [None] * plan.treedef.num_leaves
  for name, group in zip(plan.names, plan.groups):
    for j, i in enumerate(group):
      leaves[i] = stacked[name][j]
  return plan.treedef.unflatten(leaves)


def stacked_abstract(plan: StackPlan, params, shardings=None) -> dict[str, jax.ShapeDtypeStruct]:
  """The stacked tree's shapes (and shardings, per stack) without computing it."""
  leaves = plan.treedef.flatten_up_to(params)
  return {
    name: jax.ShapeDtypeStruct(
      (len(group), *leaves[group[0]].shape),
      leaves[group[0]].dtype,
      sharding=None if shardings is None else shardings[k],
    )
    for k, (name, group) in enumerate(zip(plan.names, plan.groups))
  }


def stack_leaves(
  make_inner: Callable[[StackPlan], optax.GradientTransformation], plan: StackPlan, shardings=None
) -> optax.GradientTransformation:
  """The optimizer `make_inner(plan)` applied to the plan's stacks; updates come back in the
  params' own tree. make_inner sees the plan so that per-leaf choices (weight-decay masks,
  group labels) can be given per stack."""
  inner = make_inner(plan)

  def init(params):
    return inner.init(stack(plan, params, shardings))

  def update(updates, state, params=None):
    stacked_params = None if params is None else stack(plan, params, shardings)
    new, state = inner.update(stack(plan, updates, shardings), state, stacked_params)
    return unstack(plan, new), state

  return optax.GradientTransformation(init, update)
