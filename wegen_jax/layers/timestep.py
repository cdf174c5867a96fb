"""Sinusoidal timestep features and the MLP that embeds them (diffusers' Timesteps and
TimestepEmbedding), shared by the UNet's time and SDXL's micro-conditioning embeddings."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from wegen_jax.layers.linear import Dense
from wegen_jax.layers.mlp import activation


def timestep_features(
  t: jax.Array, dim: int, *, flip_sin_to_cos: bool = True, freq_shift: float = 0.0, max_period: float = 10000.0
) -> jax.Array:
  """[N] (float or int) -> [N, dim] float32: [sin | cos] (or [cos | sin] when flipped)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if flip_sin_to_cos:
    emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class TimestepEmbedding(nnx.Module):
  """linear_2(act(linear_1(x)))."""

  def __init__(
    self, in_features: int, features: int, *, act: str = "silu", dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs
  ):
    kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.act = act
    self.linear_1 = Dense(in_features, features, axes=("embed", "mlp"), **kw)
    self.linear_2 = Dense(features, features, axes=("mlp", "embed"), **kw)

  def __call__(self, x):
    return self.linear_2(activation(self.act)(self.linear_1(x)))
