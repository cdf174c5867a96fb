"""The GoT module (SYSTEMS.md §2): MLLM (with LoRA) -> Semantic-Spatial Guidance Module -> SDXL
UNet with 12 input channels, and the frozen VAE.

Attribute names are the optimizer groups: `llm`, `semantic` (Linear E -> E: the UNet's 64
cross-attention tokens), `pooled` (Linear E -> 1280, averaged over the 64 tokens: SDXL's
text_embeds), `unet`, `vae`. The MLLM is the text model of Qwen2.5-VL (models/llm.py); its
vision tower joins when models/qwen2_5_vl.py lands (editing then also shows the MLLM the source
image; here the source reaches the UNet as the reference latent only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wegen_jax.layers import Dense
from wegen_jax.layers.lora import apply_lora
from wegen_jax.models.llm import LLM
from wegen_jax.models.patch_autoencoder import PatchAutoencoder, PatchAutoencoderConfig
from wegen_jax.models.unet import UNet2DConditionModel
from wegen_jax.models.vae import AutoencoderKL
from wegen_jax.systems.got.config import GoTConfig


class GoT(nnx.Module):
  def __init__(self, cfg: GoTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    e = cfg.llm.hidden_size
    kw = dict(use_bias=True, dtype=jnp.dtype(cfg.llm.dtype), param_dtype=jnp.dtype(cfg.llm.param_dtype), rngs=rngs)
    self.llm = LLM(cfg.llm, rngs=rngs)
    if cfg.lora_rank:
      apply_lora(
        self.llm, cfg.lora_targets, rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, rngs=rngs
      )
    self.semantic = Dense(e, e, axes=("embed", None), **kw)
    self.pooled = Dense(e, cfg.pooled_dim, axes=("embed", None), **kw)
    self.unet = UNet2DConditionModel(cfg.unet, rngs=rngs)
    autoencoder = PatchAutoencoder if isinstance(cfg.vae, PatchAutoencoderConfig) else AutoencoderKL
    self.vae = autoencoder(cfg.vae, rngs=rngs)

  def mllm(self, input_ids, positions=None, segment_ids=None):
    """LLMOutput of the MLLM on token rows (M-RoPE text positions: the same index on t, h, w)."""
    if positions is not None and self.cfg.llm.mrope_section is not None and positions.ndim == 2:
      positions = jnp.broadcast_to(positions[None], (3,) + positions.shape)
    return self.llm.forward(input_ids, positions=positions, segment_ids=segment_ids)

  def ssgm(self, hidden: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Last hidden states at the 64 im_gen positions [B, 64, E] -> (encoder_hidden_states
    [B, 64, E], pooled text_embeds [B, 1280]), float32."""
    tokens = self.semantic(hidden).astype(jnp.float32)
    pooled = self.pooled(hidden).astype(jnp.float32).mean(axis=1)
    return tokens, pooled

  def null_semantic(self, like: jax.Array) -> jax.Array:
    """The semantic branch's null condition: the projector of zeros (its bias), [B, 64, E]."""
    return self.semantic(jnp.zeros_like(like)).astype(jnp.float32)

  @staticmethod
  def time_ids(batch: int, height: int, width: int) -> jax.Array:
    """SDXL's (original size, crop top-left, target size) = (H, W, 0, 0, H, W)."""
    return jnp.tile(jnp.asarray([[height, width, 0, 0, height, width]], jnp.float32), (batch, 1))

  def _encode(self, pixels):
    n = self.cfg.vae_encode_slices
    if n <= 1 or pixels.shape[0] % n:
      return self.vae.encode(pixels)
    slices = jnp.swapaxes(pixels.reshape((pixels.shape[0] // n, n) + pixels.shape[1:]), 0, 1)
    post = jax.lax.map(self.vae.encode, slices)
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape((pixels.shape[0],) + x.shape[2:]), post)

  def condition_latents(self, pixels: jax.Array) -> jax.Array:
    """[M, 3, H, W] in [-1, 1] -> the VAE posterior's mode, unscaled (GoT's reference and
    spatial latents); no gradient (the VAE is frozen)."""
    return jax.lax.stop_gradient(self._encode(pixels).mode().astype(jnp.float32))

  def spatial_latents(self, canvases: jax.Array, valid: jax.Array) -> jax.Array:
    """Box canvases [B, N, 3, H, W] with valid [B, N] -> the mean of their latents [B, C, h, w]
    (a row with no box carries one valid black canvas)."""
    b, n = valid.shape
    lat = self.condition_latents(canvases.reshape((b * n,) + canvases.shape[2:]))
    lat = lat.reshape((b, n) + lat.shape[1:])
    w = valid.astype(jnp.float32)[:, :, None, None, None]
    return jnp.sum(lat * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)

  def target_latents(self, pixels: jax.Array, key) -> jax.Array:
    """Training targets: sampled and scaled latents (as SDXL fine-tuning), no gradient."""
    return jax.lax.stop_gradient(self.vae.to_latents(self._encode(pixels).sample(key)))
