"""WeGen's projectors between the EVA feature space (1792) and the LLM (4096).

  input:  EVA patch tokens [B, 1024, 1792] -> 4x4 average pool -> [B, 64, 1792]
          -> Linear(1792 -> 4096, no bias)             (AvgPoolProjector, `input_resampler`)
  output: LLM hidden states [B, 64, 4096] -> Linear(4096 -> 1792, no bias)
                                                       (LinearProjector, `output_resampler`)
The avg-pooled 64 x 1792 features are also the regression target and the SDXL condition.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from wegen_jax.layers import Dense


def avg_pool_tokens(tokens: jax.Array, num_queries: int = 64) -> jax.Array:
  """[B, N, C] square grid of tokens -> [B, num_queries, C] by non-overlapping average pools.

  Same as SEED-X/WeGen `AvgPoolQuery`: stride = sqrt(N) // sqrt(num_queries), torch
  `avg_pool2d(kernel=stride, stride=stride)` (a ragged border is dropped), row-major order.
  """
  b, n, c = tokens.shape
  side = math.isqrt(n)
  if side * side != n:
    raise ValueError(f"{n} tokens do not form a square grid")
  stride = int(side // num_queries**0.5)
  if stride < 1:
    raise ValueError(f"cannot pool a {side}x{side} grid down to {num_queries} tokens")
  out = side // stride
  grid = tokens.reshape(b, side, side, c)[:, : out * stride, : out * stride]
  grid = grid.reshape(b, out, stride, out, stride, c).astype(jnp.float32).mean(axis=(2, 4))
  return grid.reshape(b, out * out, c).astype(tokens.dtype)


class InputProjector(nnx.Module):
  """avg_pool_tokens then Linear(vision -> llm, no bias)."""

  def __init__(
    self,
    vision_dim: int = 1792,
    llm_dim: int = 4096,
    num_queries: int = 64,
    *,
    dtype=None,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.num_queries = num_queries
    self.proj = Dense(vision_dim, llm_dim, axes=(None, "embed"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, vision_tokens: jax.Array) -> jax.Array:
    return self.proj(avg_pool_tokens(vision_tokens, self.num_queries))


class OutputProjector(nnx.Module):
  """Linear(llm -> vision, no bias), untied from the input projector."""

  def __init__(
    self, llm_dim: int = 4096, vision_dim: int = 1792, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs
  ):
    self.proj = Dense(llm_dim, vision_dim, axes=("embed", None), dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, hidden_states: jax.Array) -> jax.Array:
    return self.proj(hidden_states)
