"""Meshes, logical-axis sharding rules, and (later) multi-host initialisation."""

from wegen_jax.parallel.mesh import MESH_AXES, make_mesh, mesh_shape
from wegen_jax.parallel.sharding import (
  DEFAULT_RULES,
  activation_sharding,
  constrain,
  create_sharded,
  logical_to_spec,
  shard_module,
  state_shardings,
)
