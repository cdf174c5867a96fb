"""2-D convolution and group norm on NHWC activations (the fast layout on TPU and CPU).

Kernels are stored HWIO (PyTorch's OIHW is converted by `convert.mapping.CONV`); logical
axes (None, None, 'conv_in', 'conv_out') let FSDP shard the output channels.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wegen_jax.layers.linear import param


def _torch_conv_init(fan_in: int):
  # PyTorch's default (kaiming_uniform a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  bound = fan_in ** -0.5
  return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


class Conv2d(nnx.Module):
  """NHWC conv with symmetric zero padding; `stride` 2 with padding 0 is preceded by
  diffusers' asymmetric (0, 1, 0, 1) pad when `pad_right_bottom` is set."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, *, stride: int = 1,
               padding: int | None = None, pad_right_bottom: bool = False, use_bias: bool = True,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.stride, self.dtype = stride, dtype
    self.padding = (kernel_size - 1) // 2 if padding is None else padding
    self.pad_right_bottom = pad_right_bottom
    init = _torch_conv_init(in_features * kernel_size * kernel_size)
    self.kernel = param(rngs, init, (kernel_size, kernel_size, in_features, out_features), param_dtype,
                        (None, None, "conv_in", "conv_out"))
    self.bias = param(rngs, init, (out_features,), param_dtype, ("conv_out",)) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = self.dtype or x.dtype
    x = x.astype(dtype)
    if self.pad_right_bottom:
      x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    kernel = self.kernel[...].astype(dtype)
    if kernel.shape[:2] == (1, 1) and self.stride == 1:
      y = jnp.dot(x, kernel[0, 0])   # pointwise: a matmul, cheaper than a conv on CPU
    else:
      p = self.padding
      y = jax.lax.conv_general_dilated(x, kernel, (self.stride, self.stride), ((p, p), (p, p)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.bias is not None:
      y = y + self.bias[...].astype(dtype)
    return y


class GroupNorm(nnx.Module):
  """GroupNorm over the channel (last) axis of [B, ..., C], statistics in float32."""

  def __init__(self, num_groups: int, features: int, *, eps: float = 1e-5, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    if features % num_groups:
      raise ValueError(f"GroupNorm: {features} channels are not divisible into {num_groups} groups")
    self.num_groups, self.eps, self.dtype = num_groups, eps, dtype
    self.scale = param(rngs, nnx.initializers.ones, (features,), param_dtype, ("norm",))
    self.bias = param(rngs, None, (features,), param_dtype, ("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = self.dtype or x.dtype
    shape = x.shape
    g = x.astype(jnp.float32).reshape(shape[0], -1, self.num_groups, shape[-1] // self.num_groups)
    mean = jnp.mean(g, axis=(1, 3), keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=(1, 3), keepdims=True)
    y = ((g - mean) * jax.lax.rsqrt(var + self.eps)).reshape(shape)
    y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(dtype)
