"""Device meshes over the axes (data, fsdp, tensor)."""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(spec: Mapping[str, int], num_devices: int | None = None) -> tuple[int, ...]:
  """Resolves a {axis: size} spec (one size may be -1: fill the rest) into a full shape."""
  n = jax.device_count() if num_devices is None else num_devices
  unknown = [a for a in spec if a not in MESH_AXES]
  if unknown:
    raise ValueError(f"unknown mesh axes {unknown}; use {MESH_AXES}")
  sizes = [int(spec.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(spec)}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if n % known:
      raise ValueError(f"{n} devices cannot be split into a mesh with fixed sizes {dict(spec)}")
    sizes[sizes.index(-1)] = n // known
  if int(np.prod(sizes)) != n:
    raise ValueError(
      f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
      f"but {n} are available; set one axis to -1 to absorb the rest"
    )
  return tuple(sizes)


def make_mesh(spec: Mapping[str, int] | None = None, devices=None) -> jax.sharding.Mesh:
  """A mesh over all (or the given) devices; default: pure FSDP."""
  spec = {"fsdp": -1} if spec is None else spec
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(spec, len(devices))
  if list(devices) == jax.devices():
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES)
