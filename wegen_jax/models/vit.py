"""Parts shared by the ViT towers (EVA-CLIP, CLIP): patch embedding, one encoder block,
and resampling of learned absolute position embeddings to another grid."""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wegen_jax.layers import MLP, Attention, LayerNorm, param
from wegen_jax.layers.linear import default_kernel_init
from wegen_jax.layers.remat import remat_call, remat_policy
from wegen_jax.layers.scan import scan_blocks
from wegen_jax.parallel.sharding import constrain


def as_array(x):
  """Accepts torch tensors at the model entry points (duck-typed: no torch import here)."""
  return x.detach().cpu().numpy() if hasattr(x, "detach") else x


class PatchEmbed(nnx.Module):
  """Conv2d(kernel = stride = patch) as one einsum over non-overlapping patches.

  Input NCHW (the PyTorch/transformers convention, so preprocessed batches are shared);
  output [B, gh * gw, D] in row-major grid order, as torch's `flatten(2).transpose(1, 2)`.
  The kernel is stored HWIO (convert.mapping.CONV); pixels past the last full patch are
  dropped, as a strided conv does.
  """

  def __init__(
    self,
    patch_size: int,
    in_channels: int,
    features: int,
    *,
    use_bias: bool = True,
    dtype=None,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.patch_size, self.dtype = patch_size, dtype
    shape = (patch_size, patch_size, in_channels, features)
    self.kernel = param(rngs, default_kernel_init, shape, param_dtype, (None, None, "channels", "embed"))
    self.bias = param(rngs, None, (features,), param_dtype, ("embed",)) if use_bias else None

  def __call__(self, pixels: jax.Array) -> jax.Array:
    b, c, h, w = pixels.shape
    p = self.patch_size
    gh, gw = h // p, w // p
    dtype = self.dtype or pixels.dtype
    x = pixels[:, :, : gh * p, : gw * p].astype(dtype).reshape(b, c, gh, p, gw, p)
    y = jnp.einsum("bciyjx,yxcd->bijd", x, self.kernel[...].astype(dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(dtype)
    return y.reshape(b, gh * gw, -1)


class ViTBlock(nnx.Module):
  """Transformer encoder block; `post_norm` picks the residual form.

  pre-norm (CLIP, EVA-01):  x + attn(norm1(x)),  then x + mlp(norm2(x))
  post-norm (EVA-CLIP-E "postnorm", timm EvaBlockPostNorm): x + norm1(attn(x)), then
  x + norm2(mlp(x)) - the norm sits inside the residual branch, not after the sum.
  `layer_scale` (EVA/BEiT gamma_1/gamma_2) multiplies each residual branch, in either form
  (EVA-CLIP's Block; timm drops it for post-norm blocks, and its config translation says so).
  """

  def __init__(
    self,
    features: int,
    num_heads: int,
    mlp_dim: int,
    *,
    head_dim: int | None = None,
    act: str = "gelu",
    norm_eps: float = 1e-6,
    post_norm: bool = False,
    qkv_bias: bool = True,
    k_bias: bool | None = None,
    layer_scale: bool = False,
    attention_impl: str = "xla",
    dtype=None,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    head_dim = head_dim or features // num_heads
    self.post_norm = post_norm
    self.norm1 = LayerNorm(features, eps=norm_eps, **kw)
    self.attn = Attention(
      features,
      num_heads,
      head_dim,
      qkv_bias=qkv_bias,
      k_bias=k_bias,
      out_bias=True,
      attention_impl=attention_impl,
      **kw,
    )
    self.norm2 = LayerNorm(features, eps=norm_eps, **kw)
    self.mlp = MLP(features, mlp_dim, act=act, use_bias=True, **kw)
    ones = nnx.initializers.ones
    self.gamma1 = param(rngs, ones, (features,), param_dtype, ("embed",)) if layer_scale else None
    self.gamma2 = param(rngs, ones, (features,), param_dtype, ("embed",)) if layer_scale else None

  def __call__(self, x, *, causal: bool = False, q_segment_ids=None, kv_segment_ids=None):
    attend = lambda h: self.attn(h, causal=causal, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids)
    scale = lambda h, g: h if g is None else h * g[...].astype(h.dtype)
    if self.post_norm:
      x = x + scale(self.norm1(attend(x)), self.gamma1)
      x = x + scale(self.norm2(self.mlp(x)), self.gamma2)
    else:
      x = x + scale(attend(self.norm1(x)), self.gamma1)
      x = x + scale(self.mlp(self.norm2(x)), self.gamma2)
    return constrain(x, ("batch", "length", "act_embed"))


def run_blocks(blocks, x, *, remat: str = "none", scan: bool = False, **kwargs):
  """Applies `blocks` in order, rematerialising each under the named policy (layers/remat.py);
  scan: as one scanned body (layers/scan.py)."""
  policy = remat_policy(remat)
  if scan:
    return scan_blocks(blocks, x, lambda b, h: b(h, **kwargs), remat=remat != "none", remat_policy=policy)
  for block in blocks:
    x = remat_call(block, x, remat=remat, **kwargs)
  return x


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """Keys cubic-convolution weights for taps at offsets -1, 0, 1, 2 (PyTorch uses a = -0.75)."""

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] matrix of torch `F.interpolate(mode='bicubic', align_corners=False)` along
  one axis (no antialias; border taps clamped), in float64."""
  src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  base = np.floor(src)
  weights = _cubic_weights(src - base)
  m = np.zeros((out_size, in_size))
  for k in range(4):
    idx = np.clip(base.astype(np.int64) - 1 + k, 0, in_size - 1)
    np.add.at(m, (np.arange(out_size), idx), weights[:, k])
  return m


def grid_of(num_positions: int) -> tuple[int, int]:
  side = math.isqrt(num_positions)
  if side * side != num_positions:
    raise ValueError(f"{num_positions} patch positions do not form a square grid; pass the grid")
  return side, side


def resample_pos_embed(
  pos_embed: np.ndarray, new_grid: Sequence[int], *, num_prefix_tokens: int = 1, old_grid: Sequence[int] | None = None
) -> np.ndarray:
  """Resizes a learned position table [prefix + gh*gw, D] to another patch grid.

  The prefix rows (CLS) are kept; the grid part is resampled bicubically with the exact
  semantics of EVA-CLIP's `interpolate_pos_embed` / transformers' `interpolate_pos_encoding`
  (torch bicubic, align_corners=False), so a 224-px checkpoint runs at 448 px as it does there.
  """
  pos_embed = np.asarray(pos_embed)
  prefix, grid = pos_embed[:num_prefix_tokens], pos_embed[num_prefix_tokens:]
  old_grid = tuple(old_grid) if old_grid is not None else grid_of(grid.shape[0])
  new_grid = tuple(new_grid)
  if old_grid == new_grid:
    return pos_embed
  g = grid.astype(np.float64).reshape(*old_grid, -1)
  out = np.einsum(
    "oi,ijd,pj->opd", bicubic_matrix(old_grid[0], new_grid[0]), g, bicubic_matrix(old_grid[1], new_grid[1])
  )
  out = out.reshape(new_grid[0] * new_grid[1], -1).astype(pos_embed.dtype)
  return np.concatenate([prefix, out], axis=0)
