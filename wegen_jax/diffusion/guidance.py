"""Guidance: how the per-branch noise predictions of one batched UNet call are combined.

Every guidance stacks its branches along the batch (branch-major: [K*B, ...]) so each sampling
step is a single UNet call; `combine` receives the predictions reshaped to [K, B, ...].
"""

from __future__ import annotations

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class NoGuidance:
  """One branch: the conditional prediction as is."""

  num_branches = 1

  def combine(self, eps):
    return eps[0]


@dataclasses.dataclass(frozen=True)
class ClassifierFree:
  """Branches [uncond, cond]: e_u + scale (e_c - e_u)."""

  scale: float = 7.5
  num_branches = 2

  def combine(self, eps):
    e_u, e_c = eps[0], eps[1]
    return e_u + self.scale * (e_c - e_u)


@dataclasses.dataclass(frozen=True)
class MultiBranch:
  """GoT's semantic-spatial guidance. Branches [cond (text+spatial+reference), text (text+reference),
  image (reference only), uncond]:
      eps = e_u + a_t (e_text - e_image) + a_s (e_cond - e_text) + a_r (e_image - e_u)
  (T2I: a_t 7.5, a_s 4.0; editing: a_t 4.0, a_s 3.0, a_r 1.5)."""

  a_t: float = 7.5
  a_s: float = 4.0
  a_r: float = 0.0
  num_branches = 4

  def combine(self, eps):
    e_c, e_t, e_i, e_u = eps[0], eps[1], eps[2], eps[3]
    return e_u + self.a_t * (e_t - e_i) + self.a_s * (e_c - e_t) + self.a_r * (e_i - e_u)


def split_branches(x: jax.Array, num_branches: int) -> jax.Array:
  """[K*B, ...] -> [K, B, ...]."""
  if x.shape[0] % num_branches:
    raise ValueError(f"batch {x.shape[0]} is not a multiple of {num_branches} guidance branches")
  return x.reshape((num_branches, x.shape[0] // num_branches) + x.shape[1:])
