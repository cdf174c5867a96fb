"""Dense and embedding layers whose parameters carry logical axis names.

Every parameter is an `nnx.Param` with a `logical_axes` metadata tuple (one name per
dimension); `wegen_jax.parallel.sharding` maps those names onto mesh axes with the
config's rules table. Parameters are stored in `param_dtype`; the matmul runs in
`dtype` (bf16 compute with float32 master weights when dtype=bfloat16).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from wegen_jax.parallel.sharding import active_sharding

Axes = Sequence[str | None]


def param(rngs: nnx.Rngs | None, init, shape, dtype, axes: Axes) -> nnx.Param:
  """Creates a parameter with logical axis names (zeros when init is None)."""
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {axes} do not match parameter shape {shape}")
  value = jnp.zeros(shape, dtype) if init is None else init(rngs.params(), shape, dtype)
  return nnx.Param(value, logical_axes=tuple(axes))


default_kernel_init = nnx.initializers.normal(0.02)


def matmul_2d(x: jax.Array, w: jax.Array) -> jax.Array:
  """x [..., in] @ w [in, out] as one [rows, in] x [in, out] matmul (the same products and sums).

  With x kept [B, T, in], the weight gradient contracts two dimensions (B and T), and XLA CPU
  then writes the incoming gradient transposed ([out, B, T]) from the fusion that produces it:
  ~30% of an LLM train step on CPU (docs/PERFORMANCE.md). One row dimension avoids that. Under
  `activation_sharding` the [B, T] dimensions stay apart, so batch and length keep their shardings.
  """
  if x.ndim <= 2 or active_sharding() is not None:
    return jnp.dot(x, w)
  return jnp.dot(x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], w.shape[-1])


class Dense(nnx.Module):
  """y = x @ kernel + bias, kernel stored [in, out] (PyTorch's Linear.weight transposed)."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    axes: Axes = ("embed", "mlp"),
    use_bias: bool = False,
    dtype=None,
    param_dtype=jnp.float32,
    kernel_init=default_kernel_init,
    rngs: nnx.Rngs,
  ):
    self.in_features, self.out_features = in_features, out_features
    self.dtype = dtype
    self.kernel = param(rngs, kernel_init, (in_features, out_features), param_dtype, axes)
    self.bias = param(rngs, None, (out_features,), param_dtype, axes[-1:]) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = self.dtype or x.dtype
    y = matmul_2d(x.astype(dtype), self.kernel[...].astype(dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(dtype)
    return y


class Embed(nnx.Module):
  """Token (or position) embedding table [num, features]; `attend` is the tied LM head."""

  def __init__(
    self,
    num_embeddings: int,
    features: int,
    *,
    axes: Axes = ("vocab", "embed"),
    dtype=None,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.dtype = dtype
    self.embedding = param(rngs, default_kernel_init, (num_embeddings, features), param_dtype, axes)

  def __call__(self, ids: jax.Array) -> jax.Array:
    table = self.embedding[...]
    return jnp.take(table, ids, axis=0).astype(self.dtype or table.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    dtype = self.dtype or x.dtype
    return matmul_2d(x.astype(dtype), self.embedding[...].astype(dtype).T)
