"""The FID Inception-v3 (pool3, 2048 features) in JAX, NHWC.

The network of pytorch-fid's `fid_inception_v3` (torchvision's inception_v3 with the FID
blocks: average pools that do not count padding, a max pool in the last block) and of
clean-fid's torchscript model: both port TF's inception-2015-12-05 graph. Attribute names
follow torchvision's, so the conversion table (convert/inception.py) maps `X.conv.kernel` to
`X.conv.weight` for every block. Batch norm runs in inference mode (running statistics).

  model(x)  x: [B, H, W, 3] in [-1, 1] (299 x 299 for FID; at least 75 x 75) -> [B, 2048]

`pytorch_fid_input` and evaluators/fid.py's clean-fid preprocessing make x from images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wegen_jax.layers import Conv2d, param

FID_SIZE = 299
BN_EPS = 1e-3  # torchvision's BasicConv2d


class BatchNorm(nnx.Module):
  """Inference batch norm over the last axis: (x - mean) / sqrt(var + eps) * scale + bias."""

  def __init__(self, features: int, *, eps: float = BN_EPS, rngs: nnx.Rngs):
    self.eps = eps
    self.scale = param(rngs, nnx.initializers.ones, (features,), jnp.float32, ("norm",))
    self.bias = param(rngs, None, (features,), jnp.float32, ("norm",))
    self.mean = param(rngs, None, (features,), jnp.float32, ("norm",))
    self.var = param(rngs, nnx.initializers.ones, (features,), jnp.float32, ("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    inv = jax.lax.rsqrt(self.var[...] + self.eps) * self.scale[...]
    return (x - self.mean[...]) * inv + self.bias[...]


class BasicConv2d(nnx.Module):
  """conv (no bias) -> batch norm -> relu, as torchvision's BasicConv2d."""

  def __init__(self, cin: int, cout: int, kernel, *, stride: int = 1, padding=0, rngs: nnx.Rngs):
    self.conv = Conv2d(cin, cout, kernel, stride=stride, padding=padding, use_bias=False, rngs=rngs)
    self.bn = BatchNorm(cout, rngs=rngs)

  def __call__(self, x):
    return jax.nn.relu(self.bn(self.conv(x)))


def max_pool(x, stride: int, pad: int = 0):
  """3x3 max pool (padding never wins: it is -inf, as PyTorch's)."""
  p = ((0, 0), (pad, pad), (pad, pad), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), p)


def avg_pool_exclude_pad(x):
  """3x3, stride 1, padding 1 average that divides by the in-image count (count_include_pad=False)."""
  p = ((0, 0), (1, 1), (1, 1), (0, 0))
  window = lambda v: jax.lax.reduce_window(v, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), p)
  return window(x) / window(jnp.ones(x.shape[:3] + (1,), x.dtype))


class InceptionA(nnx.Module):
  def __init__(self, cin: int, pool_features: int, *, rngs: nnx.Rngs):
    self.branch1x1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch5x5_1 = BasicConv2d(cin, 48, 1, rngs=rngs)
    self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
    self.branch_pool = BasicConv2d(cin, pool_features, 1, rngs=rngs)

  def __call__(self, x):
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([self.branch1x1(x), b5, b3, self.branch_pool(avg_pool_exclude_pad(x))], -1)


class InceptionB(nnx.Module):
  def __init__(self, cin: int, *, rngs: nnx.Rngs):
    self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([self.branch3x3(x), b3, max_pool(x, 2)], -1)


class InceptionC(nnx.Module):
  def __init__(self, cin: int, c7: int, *, rngs: nnx.Rngs):
    row, col = dict(padding=(0, 3)), dict(padding=(3, 0))  # 1x7 and 7x1 convolutions
    self.branch1x1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch7x7_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
    self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), **row, rngs=rngs)
    self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), **col, rngs=rngs)
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), **col, rngs=rngs)
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), **row, rngs=rngs)
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), **col, rngs=rngs)
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), **row, rngs=rngs)
    self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

  def __call__(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    d = x
    for k in range(1, 6):
      d = getattr(self, f"branch7x7dbl_{k}")(d)
    return jnp.concatenate([self.branch1x1(x), b7, d, self.branch_pool(avg_pool_exclude_pad(x))], -1)


class InceptionD(nnx.Module):
  def __init__(self, cin: int, *, rngs: nnx.Rngs):
    self.branch3x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return jnp.concatenate([b3, b7, max_pool(x, 2)], -1)


class InceptionE(nnx.Module):
  """`max_pooled`: FIDInceptionE_2 (Mixed_7c) pools by max, FIDInceptionE_1 (Mixed_7b) by
  an average that does not count padding."""

  def __init__(self, cin: int, *, max_pooled: bool, rngs: nnx.Rngs):
    self.max_pooled = max_pooled
    row, col = dict(padding=(0, 1)), dict(padding=(1, 0))
    self.branch1x1 = BasicConv2d(cin, 320, 1, rngs=rngs)
    self.branch3x3_1 = BasicConv2d(cin, 384, 1, rngs=rngs)
    self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), **row, rngs=rngs)
    self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), **col, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), **row, rngs=rngs)
    self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), **col, rngs=rngs)
    self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3_1(x)
    d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pooled = max_pool(x, 1, pad=1) if self.max_pooled else avg_pool_exclude_pad(x)
    parts = [self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3)]
    parts += [self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pooled)]
    return jnp.concatenate(parts, -1)


class InceptionV3(nnx.Module):
  """FID Inception-v3 up to pool3 (the 1008-class fc is not used by FID and not kept)."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
    self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
    self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
    self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
    self.Mixed_6a = InceptionB(288, rngs=rngs)
    self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
    self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
    self.Mixed_7a = InceptionD(768, rngs=rngs)
    self.Mixed_7b = InceptionE(1280, max_pooled=False, rngs=rngs)
    self.Mixed_7c = InceptionE(2048, max_pooled=True, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[1:3]) < 75:
      raise ValueError(f"Inception-v3 takes [B, H, W, 3] images of at least 75 x 75 in [-1, 1], got {x.shape}")
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x.astype(jnp.float32))))
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(max_pool(x, 2)))
    x = max_pool(x, 2)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
      x = getattr(self, f"Mixed_{name}")(x)
    return x.mean(axis=(1, 2))  # adaptive average pool to 1x1: pool3


def pytorch_fid_input(images01: jax.Array, size: int = FID_SIZE) -> jax.Array:
  """pytorch-fid's own input path: [B, H, W, 3] in [0, 1] -> bilinear (half-pixel centres,
  no antialiasing, as F.interpolate(align_corners=False)) to size x size -> [-1, 1]."""
  b, h, w, c = images01.shape
  if (h, w) != (size, size):
    images01 = jax.image.resize(images01, (b, size, size, c), "bilinear", antialias=False)
  return 2.0 * images01 - 1.0
