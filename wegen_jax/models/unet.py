"""UNet2DConditionModel (Stable Diffusion 1.x/2.x, SDXL) in Flax NNX.

Module and attribute names mirror diffusers (`down_blocks.1.attentions.0.transformer_blocks.0.
attn2`...) so the conversion table (wegen_jax.convert.diffusers) is a rename plus layout
transforms. Activations are NHWC inside; the public call takes and returns NCHW like diffusers.
The config is per-block explicit (UNetConfig.from_diffusers turns a config.json into it), so
any combination of block types, widths, head counts and depths builds without special cases.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from wegen_jax.layers import (
  Attention,
  Conv2d,
  Dense,
  GroupNorm,
  LayerNorm,
  TimestepEmbedding,
  activation,
  timestep_features,
)
from wegen_jax.layers.conv import NHWC_AXES
from wegen_jax.layers.remat import remat_call
from wegen_jax.layers.scan import scan_blocks
from wegen_jax.parallel.sharding import constrain

DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_TYPES = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D", None)


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Everything per down block i (up block i uses the reversed lists, as diffusers does)."""

  in_channels: int = 4
  out_channels: int = 4
  block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
  down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
  up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
  mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
  layers_per_block: tuple[int, ...] = (2, 2, 2, 2)
  # transformer depth per resnet layer: down block i -> layers_per_block[i] entries; up block
  # i -> layers_per_block[-1-i] + 1 entries; the mid block has one transformer stack.
  down_transformer_layers: tuple[tuple[int, ...], ...] = ((1, 1),) * 4
  up_transformer_layers: tuple[tuple[int, ...], ...] = ((1, 1, 1),) * 4
  mid_transformer_layers: int = 1
  num_attention_heads: tuple[int, ...] = (8, 8, 8, 8)
  cross_attention_dim: tuple[int, ...] = (768, 768, 768, 768)
  use_linear_projection: bool = False
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  act_fn: str = "silu"
  flip_sin_to_cos: bool = True
  freq_shift: float = 0.0
  downsample_padding: int = 1
  mid_block_scale_factor: float = 1.0
  # kept for the config round trip: diffusers applies it only to the Resnet*/SimpleCrossAttn*
  # block types, none of which is supported here, so our blocks' resnets always use 1.0
  resnet_out_scale_factor: float = 1.0
  center_input_sample: bool = False
  conv_in_kernel: int = 3
  conv_out_kernel: int = 3
  time_embedding_dim: int | None = None
  time_embedding_act_fn: str | None = None
  addition_embed_type: str | None = None  # None | "text_time" (SDXL)
  addition_time_embed_dim: int | None = None
  projection_class_embeddings_input_dim: int | None = None
  upcast_attention: bool = False  # kept for export; softmax is float32 anyway
  sample_size: Any = None
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "xla"
  remat: bool = False  # rematerialise each block in the backward pass
  scan_layers: bool = False  # scan each transformer stack (layers/scan.py)
  # "gated": GLIGEN (diffusers attention_type="gated"): a box-token position net and a gated
  # self-attention `fuser` in every transformer block, used when a call passes `gligen`
  attention_type: str = "default"

  def __post_init__(self):
    for f in dataclasses.fields(self):  # JSON gives lists; configs must stay hashable (jit static)
      v = getattr(self, f.name)
      if isinstance(v, list):
        object.__setattr__(self, f.name, tuple(tuple(x) if isinstance(x, list) else x for x in v))
    n = len(self.block_out_channels)
    per_block = dict(
      down_block_types=self.down_block_types,
      up_block_types=self.up_block_types,
      layers_per_block=self.layers_per_block,
      num_attention_heads=self.num_attention_heads,
      cross_attention_dim=self.cross_attention_dim,
      down_transformer_layers=self.down_transformer_layers,
      up_transformer_layers=self.up_transformer_layers,
    )
    for name, v in per_block.items():
      if len(v) != n:
        raise ValueError(f"UNetConfig.{name} has {len(v)} entries but there are {n} blocks")
    for t in self.down_block_types:
      if t not in DOWN_TYPES:
        raise ValueError(f"unsupported down block {t!r}; supported: {DOWN_TYPES}")
    for t in self.up_block_types:
      if t not in UP_TYPES:
        raise ValueError(f"unsupported up block {t!r}; supported: {UP_TYPES}")
    if self.mid_block_type not in MID_TYPES:
      raise ValueError(f"unsupported mid block {self.mid_block_type!r}; supported: {MID_TYPES}")
    if self.attention_type not in ("default", "gated"):
      raise ValueError(f"unsupported attention_type {self.attention_type!r}; supported: default, gated (GLIGEN)")
    if self.addition_embed_type not in (None, "text_time"):
      raise ValueError(f"unsupported addition_embed_type {self.addition_embed_type!r}; supported: text_time")

  @property
  def time_embed_dim(self) -> int:
    return self.time_embedding_dim or self.block_out_channels[0] * 4

  def replace(self, **kw) -> "UNetConfig":
    return dataclasses.replace(self, **kw)


def _kw(cfg: UNetConfig, rngs):
  return dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)


class ResnetBlock2D(nnx.Module):
  """norm-act-conv twice, time embedding added in between, 1x1 shortcut when widths differ."""

  def __init__(
    self,
    in_ch: int,
    out_ch: int,
    temb_ch: int | None,
    *,
    groups: int,
    eps: float,
    act: str = "silu",
    output_scale_factor: float = 1.0,
    dtype=None,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.act, self.output_scale_factor = act, output_scale_factor
    self.norm1 = GroupNorm(groups, in_ch, eps=eps, **kw)
    self.conv1 = Conv2d(in_ch, out_ch, 3, **kw)
    self.time_emb_proj = Dense(temb_ch, out_ch, axes=("embed", "conv_out"), use_bias=True, **kw) if temb_ch else None
    self.norm2 = GroupNorm(groups, out_ch, eps=eps, **kw)
    self.conv2 = Conv2d(out_ch, out_ch, 3, **kw)
    self.conv_shortcut = Conv2d(in_ch, out_ch, 1, **kw) if in_ch != out_ch else None

  def __call__(self, x, temb=None):
    act = activation(self.act)
    h = self.conv1(act(self.norm1(x)))
    if self.time_emb_proj is not None and temb is not None:
      h = h + self.time_emb_proj(act(temb))[:, None, None, :]
    h = self.conv2(act(self.norm2(h)))
    if self.conv_shortcut is not None:
      x = self.conv_shortcut(x)
    out = x + h
    return out if self.output_scale_factor == 1.0 else out / self.output_scale_factor


class GEGLUFeedForward(nnx.Module):
  """out(h * gelu(gate)), [h | gate] = proj(x). One fused projection (not layers.GatedMLP's
  separate gate/up) because diffusers stores it fused as ff.net.0.proj."""

  def __init__(self, dim: int, inner: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.proj = Dense(dim, 2 * inner, axes=("embed", "mlp"), **kw)
    self.out = Dense(inner, dim, axes=("mlp", "embed"), **kw)

  def __call__(self, x):
    h, gate = jnp.split(self.proj(x), 2, axis=-1)
    return self.out(h * jax.nn.gelu(gate, approximate=False))


class GatedSelfAttentionDense(nnx.Module):
  """GLIGEN's fuser: self-attention over [visual tokens | projected box tokens], then a GEGLU
  feed-forward, each added through a tanh gate that starts closed (alpha = 0)."""

  def __init__(
    self, dim: int, context_dim: int, heads: int, head_dim: int, *, dtype=None, param_dtype=jnp.float32, rngs
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.linear = Dense(context_dim, dim, axes=(None, "embed"), use_bias=True, **kw)
    self.attn = Attention(dim, heads, head_dim, out_bias=True, **kw)
    self.ff = GEGLUFeedForward(dim, 4 * dim, **kw)
    self.norm1 = LayerNorm(dim, eps=1e-5, **kw)
    self.norm2 = LayerNorm(dim, eps=1e-5, **kw)
    self.alpha_attn = nnx.Param(jnp.zeros((), param_dtype), logical_axes=())
    self.alpha_dense = nnx.Param(jnp.zeros((), param_dtype), logical_axes=())

  def __call__(self, x, objs, scale=1.0):
    """scale: 0 turns grounding off (GLIGEN's scheduled sampling), traced so one program serves both."""
    n = x.shape[1]
    objs = self.linear(objs.astype(x.dtype))
    gate = jnp.tanh(self.alpha_attn[...]).astype(x.dtype) * scale
    x = x + gate * self.attn(self.norm1(jnp.concatenate([x, objs], axis=1)))[:, :n]
    return x + jnp.tanh(self.alpha_dense[...]).astype(x.dtype) * scale * self.ff(self.norm2(x))


def fourier_box_embedding(boxes, num_freqs: int = 8):
  """boxes [B, N, 4] (xyxy in [0, 1]) -> [B, N, num_freqs * 2 * 4], diffusers' order (freq, sin|cos, coord)."""
  freqs = 100.0 ** (jnp.arange(num_freqs, dtype=jnp.float32) / num_freqs)
  emb = boxes.astype(jnp.float32)[..., None] * freqs  # [B, N, 4, F]
  emb = jnp.stack([jnp.sin(emb), jnp.cos(emb)], axis=-1)  # [B, N, 4, F, 2]
  return jnp.transpose(emb, (0, 1, 3, 4, 2)).reshape(boxes.shape[:2] + (num_freqs * 8,))


class GLIGENPositionNet(nnx.Module):
  """GLIGEN's text-only position net (diffusers GLIGENTextBoundingboxProjection): per box its
  phrase embedding and Fourier box embedding (learned null features where masks = 0) -> an MLP
  (512, SiLU, 512, SiLU) -> one box token of the UNet's cross-attention width."""

  def __init__(
    self, positive_len: int, out_dim: int, *, fourier_freqs: int = 8, dtype=None, param_dtype=jnp.float32, rngs
  ):
    kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fourier_freqs = fourier_freqs
    position_dim = fourier_freqs * 8
    self.linears = nnx.List(
      [
        Dense(positive_len + position_dim, 512, **kw),
        Dense(512, 512, **kw),
        Dense(512, out_dim, axes=("mlp", "embed"), **kw),
      ]
    )
    self.null_positive_feature = nnx.Param(jnp.zeros((positive_len,), param_dtype), logical_axes=("embed",))
    self.null_position_feature = nnx.Param(jnp.zeros((position_dim,), param_dtype), logical_axes=(None,))

  def __call__(self, boxes, masks, positive_embeddings):
    """boxes [B, N, 4], masks [B, N] (1 = a real box), positive_embeddings [B, N, positive_len]."""
    m = masks.astype(jnp.float32)[..., None]
    xyxy = fourier_box_embedding(boxes, self.fourier_freqs)
    xyxy = xyxy * m + (1 - m) * self.null_position_feature[...].astype(jnp.float32)
    pos = positive_embeddings.astype(jnp.float32) * m + (1 - m) * self.null_positive_feature[...].astype(jnp.float32)
    h = jnp.concatenate([pos, xyxy], axis=-1)
    h = jax.nn.silu(self.linears[0](h))
    h = jax.nn.silu(self.linears[1](h))
    return self.linears[2](h)


class BasicTransformerBlock(nnx.Module):
  """Pre-norm self-attention, cross-attention, GEGLU feed-forward, each residual."""

  def __init__(
    self,
    dim: int,
    heads: int,
    cross_dim: int,
    *,
    attention_impl: str = "xla",
    gated: bool = False,
    dtype=None,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    head_dim = dim // heads
    self.norm1 = LayerNorm(dim, eps=1e-5, **kw)
    self.attn1 = Attention(dim, heads, head_dim, out_bias=True, attention_impl=attention_impl, **kw)
    self.norm2 = LayerNorm(dim, eps=1e-5, **kw)
    self.attn2 = Attention(
      dim, heads, head_dim, kv_features=cross_dim, out_bias=True, attention_impl=attention_impl, **kw
    )
    self.norm3 = LayerNorm(dim, eps=1e-5, **kw)
    self.ff = GEGLUFeedForward(dim, 4 * dim, **kw)
    self.fuser = GatedSelfAttentionDense(dim, cross_dim, heads, head_dim, **kw) if gated else None

  def __call__(self, x, context, gligen=None):
    """gligen: (box tokens [B, N, cross_dim], scale) for a GLIGEN UNet, else None."""
    x = x + self.attn1(self.norm1(x))
    if gligen is not None and self.fuser is not None:
      x = self.fuser(x, *gligen)
    x = x + self.attn2(self.norm2(x), context)
    return x + self.ff(self.norm3(x))


class Transformer2DModel(nnx.Module):
  """GroupNorm, proj_in (1x1 conv or linear), transformer blocks over H*W tokens, proj_out, residual.
  Width inside is heads * (channels // heads), as in diffusers (equal to channels when divisible)."""

  def __init__(
    self,
    channels: int,
    heads: int,
    cross_dim: int,
    depth: int,
    *,
    groups: int,
    linear_projection: bool,
    attention_impl: str = "xla",
    scan: bool = False,
    remat: bool = False,
    gated: bool = False,
    dtype=None,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    inner = heads * (channels // heads)
    self.norm = GroupNorm(groups, channels, eps=1e-6, **kw)
    if linear_projection:
      self.proj_in = Dense(channels, inner, axes=("conv_in", "embed"), use_bias=True, **kw)
      self.proj_out = Dense(inner, channels, axes=("embed", "conv_out"), use_bias=True, **kw)
    else:
      self.proj_in = Conv2d(channels, inner, 1, **kw)
      self.proj_out = Conv2d(inner, channels, 1, **kw)
    self.transformer_blocks = nnx.List(
      [
        BasicTransformerBlock(inner, heads, cross_dim, attention_impl=attention_impl, gated=gated, **kw)
        for _ in range(depth)
      ]
    )
    self.scan, self.remat = scan, remat

  def __call__(self, x, context, gligen=None):
    b, h, w, _ = x.shape
    # 1x1 conv and linear projections are the same matmul on NHWC; only the weight layout differs.
    t = self.proj_in(self.norm(x))
    t = t.reshape(b, h * w, t.shape[-1])
    if self.scan and len(self.transformer_blocks) > 1:  # SDXL's 10-deep stacks
      # remat: the backward keeps only each layer's input; a scan differentiated without it
      # stores every layer's attention probabilities at once (1.4 TB/chip for SDXL at 1024 px)
      t = scan_blocks(self.transformer_blocks, t, lambda block, h: block(h, context, gligen), remat=self.remat)
    else:
      for block in self.transformer_blocks:
        t = block(t, context, gligen)
    return self.proj_out(t.reshape(b, h, w, t.shape[-1])) + x


class Downsample2D(nnx.Module):
  def __init__(self, channels: int, *, padding: int = 1, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.conv = Conv2d(
      channels,
      channels,
      3,
      stride=2,
      padding=padding,
      pad_right_bottom=padding == 0,
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
    )

  def __call__(self, x):
    return self.conv(x)


def upsample_nearest(x, size=None):
  """Nearest-neighbour resize of NHWC to `size` (default 2x), PyTorch's index rule floor(i*in/out)."""
  h, w = x.shape[1:3]
  oh, ow = (2 * h, 2 * w) if size is None else tuple(size)
  if (oh, ow) == (2 * h, 2 * w):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  rows = jnp.minimum(jnp.floor(jnp.arange(oh) * (h / oh)).astype(jnp.int32), h - 1)
  cols = jnp.minimum(jnp.floor(jnp.arange(ow) * (w / ow)).astype(jnp.int32), w - 1)
  return x[:, rows][:, :, cols]


class Upsample2D(nnx.Module):
  def __init__(self, channels: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.conv = Conv2d(channels, channels, 3, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x, size=None):
    return self.conv(upsample_nearest(x, size))


def _call(cfg: UNetConfig, module, *args):
  """module(*args), rematerialised in the backward pass when cfg.remat (saves activation memory)."""
  return remat_call(module, *args, remat="full" if cfg.remat else "none")


class DownBlock(nnx.Module):
  """CrossAttnDownBlock2D (with attentions) or DownBlock2D; returns (x, skip outputs)."""

  def __init__(self, cfg: UNetConfig, i: int, in_ch: int, *, rngs: nnx.Rngs):
    kw = _kw(cfg, rngs)
    out_ch = cfg.block_out_channels[i]
    n = cfg.layers_per_block[i]
    self.cfg = cfg
    self.resnets = nnx.List(
      [
        ResnetBlock2D(
          in_ch if j == 0 else out_ch,
          out_ch,
          cfg.time_embed_dim,
          groups=cfg.norm_num_groups,
          eps=cfg.norm_eps,
          act=cfg.act_fn,
          **kw,
        )
        for j in range(n)
      ]
    )
    self.attentions = (
      None
      if cfg.down_block_types[i] != "CrossAttnDownBlock2D"
      else nnx.List(
        [
          Transformer2DModel(
            out_ch,
            cfg.num_attention_heads[i],
            cfg.cross_attention_dim[i],
            cfg.down_transformer_layers[i][j],
            groups=cfg.norm_num_groups,
            linear_projection=cfg.use_linear_projection,
            attention_impl=cfg.attention_impl,
            scan=cfg.scan_layers,
            remat=cfg.remat,
            gated=cfg.attention_type == "gated",
            **kw,
          )
          for j in range(n)
        ]
      )
    )
    last = i == len(cfg.block_out_channels) - 1
    self.downsamplers = None if last else nnx.List([Downsample2D(out_ch, padding=cfg.downsample_padding, **kw)])

  def __call__(self, x, temb, context, gligen=None):
    skips = []
    for j, resnet in enumerate(self.resnets):
      x = _call(self.cfg, resnet, x, temb)
      if self.attentions is not None:
        x = _call(self.cfg, self.attentions[j], x, context, gligen)
      x = constrain(x, NHWC_AXES)
      skips.append(x)
    if self.downsamplers is not None:
      x = self.downsamplers[0](x)
      skips.append(x)
    return x, skips


class UpBlock(nnx.Module):
  """CrossAttnUpBlock2D or UpBlock2D: each resnet eats one skip (concatenated on channels)."""

  def __init__(self, cfg: UNetConfig, i: int, prev_ch: int, *, rngs: nnx.Rngs):
    kw = _kw(cfg, rngs)
    rev = list(reversed(cfg.block_out_channels))
    out_ch, nb = rev[i], len(rev)
    skip_in = rev[min(i + 1, nb - 1)]
    n = cfg.layers_per_block[nb - 1 - i] + 1
    heads, cross = cfg.num_attention_heads[nb - 1 - i], cfg.cross_attention_dim[nb - 1 - i]
    self.cfg = cfg
    self.resnets = nnx.List(
      [
        ResnetBlock2D(
          (prev_ch if j == 0 else out_ch) + (skip_in if j == n - 1 else out_ch),
          out_ch,
          cfg.time_embed_dim,
          groups=cfg.norm_num_groups,
          eps=cfg.norm_eps,
          act=cfg.act_fn,
          **kw,
        )
        for j in range(n)
      ]
    )
    self.attentions = (
      None
      if cfg.up_block_types[i] != "CrossAttnUpBlock2D"
      else nnx.List(
        [
          Transformer2DModel(
            out_ch,
            heads,
            cross,
            cfg.up_transformer_layers[i][j],
            groups=cfg.norm_num_groups,
            linear_projection=cfg.use_linear_projection,
            attention_impl=cfg.attention_impl,
            scan=cfg.scan_layers,
            remat=cfg.remat,
            gated=cfg.attention_type == "gated",
            **kw,
          )
          for j in range(n)
        ]
      )
    )
    self.upsamplers = None if i == nb - 1 else nnx.List([Upsample2D(out_ch, **kw)])

  def __call__(self, x, skips, temb, context, upsample_size=None, gligen=None):
    for j, resnet in enumerate(self.resnets):
      x = jnp.concatenate([x, skips[-1 - j]], axis=-1)
      x = _call(self.cfg, resnet, x, temb)
      if self.attentions is not None:
        x = _call(self.cfg, self.attentions[j], x, context, gligen)
      x = constrain(x, NHWC_AXES)
    if self.upsamplers is not None:
      x = self.upsamplers[0](x, upsample_size)
    return x


class MidBlock(nnx.Module):
  """UNetMidBlock2DCrossAttn: resnet, then (transformer, resnet). UNetMidBlock2D as the
  UNet builds it (num_layers=0, no attention): one resnet."""

  def __init__(self, cfg: UNetConfig, *, rngs: nnx.Rngs):
    kw = _kw(cfg, rngs)
    ch = cfg.block_out_channels[-1]
    res = lambda: ResnetBlock2D(
      ch,
      ch,
      cfg.time_embed_dim,
      groups=cfg.norm_num_groups,
      eps=cfg.norm_eps,
      act=cfg.act_fn,
      output_scale_factor=cfg.mid_block_scale_factor,
      **kw,
    )
    cross = cfg.mid_block_type == "UNetMidBlock2DCrossAttn"
    self.resnets = nnx.List([res(), res()] if cross else [res()])
    self.attentions = nnx.List(
      [
        Transformer2DModel(
          ch,
          cfg.num_attention_heads[-1],
          cfg.cross_attention_dim[-1],
          cfg.mid_transformer_layers,
          groups=cfg.norm_num_groups,
          linear_projection=cfg.use_linear_projection,
          attention_impl=cfg.attention_impl,
          scan=cfg.scan_layers,
          remat=cfg.remat,
          gated=cfg.attention_type == "gated",
          **kw,
        )
      ]
      if cross
      else []
    )
    self.cfg = cfg

  def __call__(self, x, temb, context, gligen=None):
    x = self.resnets[0](x, temb)
    for attention, resnet in zip(self.attentions, self.resnets[1:]):
      x = resnet(_call(self.cfg, attention, x, context, gligen), temb)
    return x


class UNet2DConditionModel(nnx.Module):
  """unet(sample [B,C,H,W], timesteps [B] or scalar, encoder_hidden_states [B,S,D],
  added_cond_kwargs={'text_embeds': [B,P], 'time_ids': [B,6]} for SDXL) -> [B,C_out,H,W]."""

  def __init__(self, cfg: UNetConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = _kw(cfg, rngs)
    boc = cfg.block_out_channels
    self.conv_in = Conv2d(cfg.in_channels, boc[0], cfg.conv_in_kernel, **kw)
    self.time_embedding = TimestepEmbedding(boc[0], cfg.time_embed_dim, act=cfg.act_fn, **kw)
    text_time = cfg.addition_embed_type == "text_time"
    if text_time and not (cfg.addition_time_embed_dim and cfg.projection_class_embeddings_input_dim):
      raise ValueError(
        "addition_embed_type='text_time' needs addition_time_embed_dim and projection_class_embeddings_input_dim"
      )
    self.add_embedding = (
      TimestepEmbedding(cfg.projection_class_embeddings_input_dim, cfg.time_embed_dim, act=cfg.act_fn, **kw)
      if text_time
      else None
    )
    self.down_blocks = nnx.List()
    ch = boc[0]
    for i in range(len(boc)):
      self.down_blocks.append(DownBlock(cfg, i, ch, rngs=rngs))
      ch = boc[i]
    self.mid_block = MidBlock(cfg, rngs=rngs) if cfg.mid_block_type else None
    self.up_blocks = nnx.List()
    for i in range(len(boc)):
      self.up_blocks.append(UpBlock(cfg, i, ch, rngs=rngs))
      ch = boc[len(boc) - 1 - i]
    self.position_net = (
      GLIGENPositionNet(cfg.cross_attention_dim[0], cfg.cross_attention_dim[0], **kw)
      if cfg.attention_type == "gated"
      else None
    )
    self.conv_norm_out = GroupNorm(cfg.norm_num_groups, boc[0], eps=cfg.norm_eps, **kw)
    self.conv_out = Conv2d(boc[0], cfg.out_channels, cfg.conv_out_kernel, **kw)

  def time_embed(self, timesteps, batch: int, added_cond_kwargs=None) -> jax.Array:
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    t = jnp.broadcast_to(jnp.reshape(jnp.asarray(timesteps), (-1,)), (batch,))
    feats = timestep_features(
      t, cfg.block_out_channels[0], flip_sin_to_cos=cfg.flip_sin_to_cos, freq_shift=cfg.freq_shift
    )
    emb = self.time_embedding(feats.astype(dtype))
    if self.add_embedding is not None:
      kwargs = added_cond_kwargs or {}
      missing = [k for k in ("text_embeds", "time_ids") if k not in kwargs]
      if missing:
        raise ValueError(f"this UNet has addition_embed_type='text_time': added_cond_kwargs must hold {missing}")
      time_ids = jnp.asarray(kwargs["time_ids"])
      tf = timestep_features(
        time_ids.reshape(-1),
        cfg.addition_time_embed_dim,
        flip_sin_to_cos=cfg.flip_sin_to_cos,
        freq_shift=cfg.freq_shift,
      )
      add = jnp.concatenate(
        [jnp.asarray(kwargs["text_embeds"]).astype(dtype), tf.reshape(time_ids.shape[0], -1).astype(dtype)], axis=-1
      )
      emb = emb + self.add_embedding(add)
    if cfg.time_embedding_act_fn:
      emb = activation(cfg.time_embedding_act_fn)(emb)
    return emb

  def forward_nhwc(self, x, timesteps, encoder_hidden_states, added_cond_kwargs=None, gligen=None):
    """The UNet on NHWC sample; returns NHWC (the layout samplers keep between steps).
    gligen (a GLIGEN UNet, attention_type="gated"): dict boxes [B, N, 4] xyxy in [0, 1], masks
    [B, N], positive_embeddings [B, N, cross_dim] (the phrases' text-encoder pooled states), and
    optionally scale (0 = grounding off for this step), as diffusers' cross_attention_kwargs["gligen"]."""
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    x = constrain(x.astype(dtype), NHWC_AXES)
    if cfg.center_input_sample:
      x = 2 * x - 1.0
    context = encoder_hidden_states.astype(dtype)
    temb = self.time_embed(timesteps, x.shape[0], added_cond_kwargs)
    grounding = None
    if gligen is not None:
      if self.position_net is None:
        raise ValueError("gligen boxes need a GLIGEN UNet (UNetConfig.attention_type='gated')")
      objs = self.position_net(gligen["boxes"], gligen["masks"], gligen["positive_embeddings"]).astype(dtype)
      grounding = (objs, jnp.asarray(gligen.get("scale", 1.0), dtype))
    x = self.conv_in(x)
    skips = [x]
    for block in self.down_blocks:
      x, outs = block(x, temb, context, grounding)
      skips += outs
    if self.mid_block is not None:
      x = self.mid_block(x, temb, context, grounding)
    for i, block in enumerate(self.up_blocks):
      n = len(block.resnets)
      mine, skips = skips[-n:], skips[:-n]
      size = skips[-1].shape[1:3] if skips else None
      x = block(x, mine, temb, context, size, grounding)
    x = activation(cfg.act_fn)(self.conv_norm_out(x))
    return self.conv_out(x)

  def __call__(self, sample, timesteps, encoder_hidden_states, added_cond_kwargs=None, gligen=None):
    out = self.forward_nhwc(
      jnp.transpose(sample, (0, 2, 3, 1)), timesteps, encoder_hidden_states, added_cond_kwargs, gligen
    )
    return jnp.transpose(out, (0, 3, 1, 2))


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int) -> UNet2DConditionModel:
  """Grows conv_in to `in_channels` inputs in place; the old channels keep their weights and the
  new ones start at zero, so the widened UNet's output is unchanged at initialisation (GoT's
  4 -> 12: [noisy | reference | spatial] latents)."""
  old = unet.conv_in
  k = old.kernel[...]
  if in_channels < k.shape[2]:
    raise ValueError(f"widen_conv_in: {in_channels} < current {k.shape[2]} input channels")
  cfg = unet.cfg
  new = Conv2d(in_channels, k.shape[3], k.shape[0], dtype=jnp.dtype(cfg.dtype), param_dtype=k.dtype, rngs=nnx.Rngs(0))
  new.kernel.set_value(jnp.zeros_like(new.kernel[...]).at[:, :, : k.shape[2]].set(k))
  new.bias.set_value(old.bias[...])
  unet.conv_in = new
  unet.cfg = cfg.replace(in_channels=in_channels)
  return unet
