"""RMSNorm and LayerNorm, computed in float32 and cast back (as HF and diffusers do)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wegen_jax.layers.linear import param

_ones = nnx.initializers.ones


class RMSNorm(nnx.Module):
  """x / rms(x) * scale. Llama/Qwen semantics: normalise in float32, cast, then scale."""

  def __init__(
    self, features: int, *, eps: float = 1e-6, axes=("embed",), dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs
  ):
    self.eps, self.dtype = eps, dtype
    self.scale = param(rngs, _ones, (features,), param_dtype, axes)

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = self.dtype or x.dtype
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return y.astype(dtype) * self.scale[...].astype(dtype)


class LayerNorm(nnx.Module):
  """Standard LayerNorm over the last axis; scale/bias optional (OPT's elementwise_affine)."""

  def __init__(
    self,
    features: int,
    *,
    eps: float = 1e-5,
    use_scale: bool = True,
    use_bias: bool = True,
    axes=("embed",),
    dtype=None,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.eps, self.dtype = eps, dtype
    self.scale = param(rngs, _ones, (features,), param_dtype, axes) if use_scale else None
    self.bias = param(rngs, None, (features,), param_dtype, axes) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = self.dtype or x.dtype
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    if self.scale is not None:
      y = y * self.scale[...].astype(jnp.float32)
    if self.bias is not None:
      y = y + self.bias[...].astype(jnp.float32)
    return y.astype(dtype)
