"""What every sharding test shares: the mesh shapes (data, fsdp, tensor) over 8 virtual CPU
devices and the relative error that compares a sharded result with the one-device one."""

import numpy as np

MESHES = [(8, 1, 1), (2, 2, 2), (1, 2, 4)]


def mesh_id(shape) -> str:
  return "x".join(map(str, shape))


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
