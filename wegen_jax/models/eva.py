"""EVA-CLIP visual tower as WeGen uses it (EVA-CLIP-E-14-plus, frozen image encoder).

  tower(pixels [B, 3, H, W]) -> patch tokens of the last block [B, gh*gw, width]
      (CLS dropped, no final norm: WeGen's `EVAVisionTransformer.forward`)
  tower.forward_features(pixels) -> all tokens [B, 1 + gh*gw, width] (CLS first)
The optional final LayerNorm (cfg.final_norm) exists only to mirror timm `Eva` configs.

Blocks are EVA's: absolute position embedding with a CLS token, q and v biases but no k
bias (a k bias only shifts every logit of a query row equally, so softmax ignores it),
exact GELU MLP, and the "postnorm" residual form of EVA-CLIP-E (see models.vit.ViTBlock).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from wegen_jax.layers import LayerNorm, param
from wegen_jax.layers.linear import default_kernel_init
from wegen_jax.models.vit import PatchEmbed, ViTBlock, as_array, run_blocks
from wegen_jax.parallel.sharding import constrain


@dataclasses.dataclass(frozen=True)
class EVAConfig:
  image_size: int = 448
  patch_size: int = 14
  in_channels: int = 3
  width: int = 1792
  depth: int = 64
  num_heads: int = 16
  mlp_dim: int = 15360
  post_norm: bool = True  # EVA-CLIP-E/bigE "postnorm"; False = pre-norm (EVA-01 style)
  qkv_bias: bool = True  # q and v biases (EVA never has a k bias)
  norm_eps: float = 1e-6
  activation: str = "gelu"
  layer_scale: bool = False  # gamma_1/gamma_2 (EVA-CLIP `ls_init_value`, timm `init_values`)
  class_token: bool = True
  embed_class: bool = True  # the position table covers CLS too (timm no_embed_class=False)
  final_norm: bool = False  # WeGen: none; timm Eva applies `norm` unless fc_norm/avg pool
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  attention_impl: str = "xla"
  scan_layers: bool = False  # one scanned block body (layers/scan.py): fast compiles at EVA-E size

  def __post_init__(self):
    if self.width % self.num_heads:
      raise ValueError(f"width={self.width} is not a multiple of num_heads={self.num_heads}")
    if self.image_size < self.patch_size:
      raise ValueError(f"image_size={self.image_size} is smaller than patch_size={self.patch_size}")

  @property
  def grid(self) -> tuple[int, int]:
    return self.image_size // self.patch_size, self.image_size // self.patch_size

  @property
  def num_prefix_tokens(self) -> int:
    return int(self.class_token)

  @property
  def num_positions(self) -> int:
    return self.grid[0] * self.grid[1] + (self.num_prefix_tokens if self.embed_class else 0)

  def replace(self, **kw) -> "EVAConfig":
    return dataclasses.replace(self, **kw)


EVA_CLIP_E_14_PLUS_448 = EVAConfig()  # WeGen's configs/visual_encoder/eva_vision.yaml


class EVAVisionTower(nnx.Module):
  def __init__(self, cfg: EVAConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    kw = dict(dtype=dtype, param_dtype=pdtype, rngs=rngs)
    self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_channels, cfg.width, use_bias=True, **kw)
    self.cls_token = param(rngs, default_kernel_init, (cfg.width,), pdtype, ("embed",)) if cfg.class_token else None
    self.pos_embed = param(rngs, default_kernel_init, (cfg.num_positions, cfg.width), pdtype, (None, "embed"))
    self.blocks = nnx.List(
      [
        ViTBlock(
          cfg.width,
          cfg.num_heads,
          cfg.mlp_dim,
          act=cfg.activation,
          norm_eps=cfg.norm_eps,
          post_norm=cfg.post_norm,
          qkv_bias=cfg.qkv_bias,
          k_bias=False,
          layer_scale=cfg.layer_scale,
          attention_impl=cfg.attention_impl,
          **kw,
        )
        for _ in range(cfg.depth)
      ]
    )
    self.norm = LayerNorm(cfg.width, eps=cfg.norm_eps, **kw) if cfg.final_norm else None

  def forward_features(self, pixels: jax.Array) -> jax.Array:
    """All tokens after the last block, [B, prefix + gh*gw, width]."""
    cfg = self.cfg
    pixels = as_array(pixels)
    x = self.patch_embed(pixels)
    if x.shape[1] != cfg.grid[0] * cfg.grid[1]:
      raise ValueError(
        f"pixels {pixels.shape} give {x.shape[1]} patches but the position table is "
        f"for a {cfg.grid} grid (image_size={cfg.image_size}); resize the input or "
        "load with the right image_size"
      )
    pos = self.pos_embed[...].astype(x.dtype)
    if not cfg.embed_class:
      x = x + pos
    if self.cls_token is not None:
      cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[2]))
      x = jnp.concatenate([cls, x], axis=1)
    if cfg.embed_class:
      x = x + pos
    x = constrain(x, ("batch", "length", "act_embed"))
    x = run_blocks(self.blocks, x, remat=cfg.remat, scan=cfg.scan_layers)
    return x if self.norm is None else self.norm(x)

  def __call__(self, pixels: jax.Array) -> jax.Array:
    """Patch tokens of the last block [B, gh*gw, width], CLS dropped (final norm only if
    cfg.final_norm; WeGen's tower has none)."""
    return self.forward_features(pixels)[:, self.cfg.num_prefix_tokens :]
