"""2-D convolution and group norm on NHWC activations (the fast layout on TPU and CPU).

Kernels are stored HWIO (PyTorch's OIHW is converted by `convert.mapping.CONV`); logical
axes (None, None, 'conv_in', 'conv_out') let FSDP shard the output channels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wegen_jax.layers.linear import param
from wegen_jax.parallel.sharding import constrain

# Activations stay batch-sharded through every convolution: otherwise XLA may follow the
# FSDP-sharded kernel, split the output channels and gather the whole batch onto each chip
# (seen in WeGen-7B's buffer assignment, docs/SCALING.md).
NHWC_AXES = ("batch", None, None, "act_embed")


# Convolutions whose input has fewer channels (RGB pixels, 4 latent channels) run as one matmul
# over shifted copies of the input (shifted_copies_conv).
SMALL_INPUT_CHANNELS = 8


def shifted_copies_conv(x: jax.Array, kernel: jax.Array, ph: int, pw: int) -> jax.Array:
  """A stride-1 NHWC convolution as one matmul: the kh*kw shifted copies of the padded input
  side by side on the channel axis, times the HWIO kernel flattened to [kh*kw*in, out]; the
  same products as the convolution. For inputs of a few channels: XLA's TPU compiler gave the
  SDXL VAE encoder's first convolution (3 input channels) a batch-minor output layout, the
  images padded to 128 lanes, which the layers after it kept: GoT-3B's VAE pass took 98.7 GiB
  of temporaries per v5p chip, 49.7 this way (docs/SCALING.md)."""
  kh, kw, cin, cout = kernel.shape
  h, w = x.shape[1] + 2 * ph - kh + 1, x.shape[2] + 2 * pw - kw + 1
  padded = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  copies = jnp.concatenate([padded[:, i : i + h, j : j + w] for i in range(kh) for j in range(kw)], axis=-1)
  return jnp.dot(constrain(copies, NHWC_AXES), kernel.reshape(kh * kw * cin, cout))


def _torch_conv_init(fan_in: int):
  # PyTorch's default (kaiming_uniform a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  bound = fan_in**-0.5
  return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


class Conv2d(nnx.Module):
  """NHWC conv with symmetric zero padding; `stride` 2 with padding 0 is preceded by
  diffusers' asymmetric (0, 1, 0, 1) pad when `pad_right_bottom` is set. kernel_size and
  padding may be (height, width) pairs (Inception's 1x7 / 7x1 convolutions)."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int | tuple[int, int] = 3,
    *,
    stride: int = 1,
    padding: int | tuple[int, int] | None = None,
    pad_right_bottom: bool = False,
    use_bias: bool = True,
    dtype=None,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.stride, self.dtype = stride, dtype
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    if padding is None:
      padding = (kh - 1) // 2 if isinstance(kernel_size, int) else ((kh - 1) // 2, (kw - 1) // 2)
    self.padding = padding
    self.pad_right_bottom = pad_right_bottom
    init = _torch_conv_init(in_features * kh * kw)
    self.kernel = param(
      rngs,
      init,
      (kh, kw, in_features, out_features),
      param_dtype,
      (None, None, "conv_in", "conv_out"),
    )
    self.bias = param(rngs, init, (out_features,), param_dtype, ("conv_out",)) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = self.dtype or x.dtype
    x = constrain(x.astype(dtype), NHWC_AXES)
    if self.pad_right_bottom:
      x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    kernel = self.kernel[...].astype(dtype)
    ph, pw = (self.padding, self.padding) if isinstance(self.padding, int) else self.padding
    if kernel.shape[:2] == (1, 1) and self.stride == 1:
      y = jnp.dot(x, kernel[0, 0])  # pointwise: a matmul, cheaper than a conv on CPU
    elif kernel.shape[2] < SMALL_INPUT_CHANNELS and self.stride == 1:
      y = shifted_copies_conv(x, kernel, ph, pw)
    else:
      y = jax.lax.conv_general_dilated(
        x, kernel, (self.stride, self.stride), ((ph, ph), (pw, pw)), dimension_numbers=("NHWC", "HWIO", "NHWC")
      )
    if self.bias is not None:
      y = y + self.bias[...].astype(dtype)
    return constrain(y, NHWC_AXES)


class GroupNorm(nnx.Module):
  """GroupNorm over the channel (last) axis of [B, ..., C], statistics in float32.

  The statistics are reduced to [B, C] first and only those are grouped, so the activation
  is never viewed as [..., groups, C / groups]: on TPU that view puts 10-40 channels on the
  128-lane minor axis and its buffers take up to 13x their size (docs/SCALING.md)."""

  def __init__(
    self, num_groups: int, features: int, *, eps: float = 1e-5, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs
  ):
    if features % num_groups:
      raise ValueError(f"GroupNorm: {features} channels are not divisible into {num_groups} groups")
    self.num_groups, self.eps, self.dtype = num_groups, eps, dtype
    self.scale = param(rngs, nnx.initializers.ones, (features,), param_dtype, ("norm",))
    self.bias = param(rngs, None, (features,), param_dtype, ("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = self.dtype or x.dtype
    b, c, g = x.shape[0], x.shape[-1], self.num_groups
    spatial = tuple(range(1, x.ndim - 1))
    per_channel = (b,) + (1,) * len(spatial) + (c,)

    def group_mean(stat):  # [B, C] per-channel means -> their group's mean, per channel
      return jnp.repeat(stat.reshape(b, g, c // g).mean(-1), c // g, axis=-1).reshape(per_channel)

    xf = x.astype(jnp.float32)
    centered = xf - group_mean(jnp.mean(xf, axis=spatial))
    inv = jax.lax.rsqrt(group_mean(jnp.mean(jnp.square(centered), axis=spatial)) + self.eps)
    y = centered * (inv * self.scale[...].astype(jnp.float32)) + self.bias[...].astype(jnp.float32)
    return y.astype(dtype)
