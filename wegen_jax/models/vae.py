"""AutoencoderKL (the Stable Diffusion / SDXL VAE) in Flax NNX, diffusers names, NHWC inside.

encode(x [B,3,H,W] in [-1, 1]) -> DiagonalGaussian over latents [B,C,H/f,W/f];
decode(z) -> image [B,3,H,W]. Neither applies `scaling_factor`: like diffusers, callers scale
(`to_latents` / `from_latents` do it, with SD3-style `shift_factor` when set).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from wegen_jax.layers import Attention, Conv2d, GroupNorm
from wegen_jax.models.unet import Downsample2D, ResnetBlock2D, Upsample2D


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  act_fn: str = "silu"
  scaling_factor: float = 0.18215
  shift_factor: float | None = None
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True
  force_upcast: bool = True  # kept for export
  sample_size: Any = 512  # kept for export
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "xla"

  def __post_init__(self):
    for f in dataclasses.fields(self):  # JSON gives lists; configs must stay hashable (jit static)
      if isinstance(getattr(self, f.name), list):
        object.__setattr__(self, f.name, tuple(getattr(self, f.name)))

  def replace(self, **kw) -> "VAEConfig":
    return dataclasses.replace(self, **kw)


@struct.dataclass
class DiagonalGaussian:
  """The encoder's posterior, NCHW; logvar clipped to [-30, 20] as in diffusers."""

  mean: jax.Array
  logvar: jax.Array

  @classmethod
  def from_moments(cls, moments):
    mean, logvar = jnp.split(moments, 2, axis=1)
    return cls(mean, jnp.clip(logvar, -30.0, 20.0))

  @property
  def std(self):
    return jnp.exp(0.5 * self.logvar)

  def mode(self):
    return self.mean

  def sample(self, key):
    return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)


class VAEAttention(nnx.Module):
  """Single-head self-attention over H*W with a GroupNorm in front and a residual."""

  def __init__(
    self, channels: int, *, groups: int, attention_impl="xla", dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.group_norm = GroupNorm(groups, channels, eps=1e-6, **kw)
    self.attn = Attention(channels, 1, channels, qkv_bias=True, out_bias=True, attention_impl=attention_impl, **kw)

  def __call__(self, x):
    b, h, w, c = x.shape
    return x + self.attn(self.group_norm(x).reshape(b, h * w, c)).reshape(b, h, w, c)


class VAEMidBlock(nnx.Module):
  def __init__(self, cfg: VAEConfig, channels: int, *, rngs: nnx.Rngs):
    kw = _kw(cfg, rngs)
    res = lambda: ResnetBlock2D(channels, channels, None, groups=cfg.norm_num_groups, eps=1e-6, act=cfg.act_fn, **kw)
    self.resnets = nnx.List([res(), res()])
    self.attentions = (
      nnx.List([VAEAttention(channels, groups=cfg.norm_num_groups, attention_impl=cfg.attention_impl, **kw)])
      if cfg.mid_block_add_attention
      else None
    )

  def __call__(self, x):
    x = self.resnets[0](x)
    if self.attentions is not None:
      x = self.attentions[0](x)
    return self.resnets[1](x)


class _Block(nnx.Module):
  """DownEncoderBlock2D / UpDecoderBlock2D: resnets then an optional resample."""

  def __init__(self, cfg: VAEConfig, in_ch: int, out_ch: int, n: int, resample: str | None, *, rngs: nnx.Rngs):
    kw = _kw(cfg, rngs)
    self.resnets = nnx.List(
      [
        ResnetBlock2D(
          in_ch if j == 0 else out_ch, out_ch, None, groups=cfg.norm_num_groups, eps=1e-6, act=cfg.act_fn, **kw
        )
        for j in range(n)
      ]
    )
    self.downsamplers = nnx.List([Downsample2D(out_ch, padding=0, **kw)]) if resample == "down" else None
    self.upsamplers = nnx.List([Upsample2D(out_ch, **kw)]) if resample == "up" else None

  def __call__(self, x):
    for r in self.resnets:
      x = r(x)
    if self.downsamplers is not None:
      x = self.downsamplers[0](x)
    if self.upsamplers is not None:
      x = self.upsamplers[0](x)
    return x


def _kw(cfg, rngs):
  return dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)


class Encoder(nnx.Module):
  def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
    kw = _kw(cfg, rngs)
    boc = cfg.block_out_channels
    self.conv_in = Conv2d(cfg.in_channels, boc[0], 3, **kw)
    self.down_blocks = nnx.List(
      [
        _Block(cfg, boc[max(i - 1, 0)], boc[i], cfg.layers_per_block, "down" if i < len(boc) - 1 else None, rngs=rngs)
        for i in range(len(boc))
      ]
    )
    self.mid_block = VAEMidBlock(cfg, boc[-1], rngs=rngs)
    self.conv_norm_out = GroupNorm(cfg.norm_num_groups, boc[-1], eps=1e-6, **kw)
    self.conv_out = Conv2d(boc[-1], 2 * cfg.latent_channels, 3, **kw)

  def __call__(self, x):
    x = self.conv_in(x)
    for b in self.down_blocks:
      x = b(x)
    x = self.mid_block(x)
    return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))  # SiLU whatever act_fn, as diffusers


class Decoder(nnx.Module):
  def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
    kw = _kw(cfg, rngs)
    rev = list(reversed(cfg.block_out_channels))
    self.conv_in = Conv2d(cfg.latent_channels, rev[0], 3, **kw)
    self.mid_block = VAEMidBlock(cfg, rev[0], rngs=rngs)
    self.up_blocks = nnx.List(
      [
        _Block(cfg, rev[max(i - 1, 0)], rev[i], cfg.layers_per_block + 1, "up" if i < len(rev) - 1 else None, rngs=rngs)
        for i in range(len(rev))
      ]
    )
    self.conv_norm_out = GroupNorm(cfg.norm_num_groups, rev[-1], eps=1e-6, **kw)
    self.conv_out = Conv2d(rev[-1], cfg.out_channels, 3, **kw)

  def __call__(self, z):
    x = self.mid_block(self.conv_in(z))
    for b in self.up_blocks:
      x = b(x)
    return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))  # SiLU whatever act_fn, as diffusers


def _nhwc(x):
  return jnp.transpose(x, (0, 2, 3, 1))


def _nchw(x):
  return jnp.transpose(x, (0, 3, 1, 2))


class LatentScaling:
  """The diffusion model's latent space of an autoencoder whose cfg has scaling_factor and
  shift_factor (shared by every autoencoder here)."""

  def to_latents(self, z):
    """Unscaled latents -> the diffusion model's latent space."""
    shift = self.cfg.shift_factor or 0.0
    return (z - shift) * self.cfg.scaling_factor

  def from_latents(self, latents):
    shift = self.cfg.shift_factor or 0.0
    return latents / self.cfg.scaling_factor + shift


class AutoencoderKL(LatentScaling, nnx.Module):
  def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = _kw(cfg, rngs)
    c2 = 2 * cfg.latent_channels
    self.encoder = Encoder(cfg, rngs=rngs)
    self.decoder = Decoder(cfg, rngs=rngs)
    self.quant_conv = Conv2d(c2, c2, 1, **kw) if cfg.use_quant_conv else None
    self.post_quant_conv = (
      Conv2d(cfg.latent_channels, cfg.latent_channels, 1, **kw) if cfg.use_post_quant_conv else None
    )

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.cfg.block_out_channels) - 1)

  def encode(self, x) -> DiagonalGaussian:
    """x [B,C,H,W] -> posterior over unscaled latents."""
    h = self.encoder(_nhwc(x).astype(jnp.dtype(self.cfg.dtype)))
    if self.quant_conv is not None:
      h = self.quant_conv(h)
    return DiagonalGaussian.from_moments(_nchw(h))

  def decode(self, z) -> jax.Array:
    """Unscaled latents [B,C,h,w] -> image [B,C,H,W] (roughly [-1, 1])."""
    z = _nhwc(z).astype(jnp.dtype(self.cfg.dtype))
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    return _nchw(self.decoder(z))

  def __call__(self, x, key=None):
    """Reconstruction: decode(sample) with a key, decode(mode) without."""
    post = self.encode(x)
    return self.decode(post.mode() if key is None else post.sample(key))
