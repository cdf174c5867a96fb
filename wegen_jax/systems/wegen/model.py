"""The WeGen module: vision tower -> avg pool -> input projector -> LLM -> output projector,
plus the SDXL-style UNet detokenizer and the VAE (SYSTEMS.md §1).

Attribute names are the optimizer groups (`vision`, `input_proj`, `llm`, `output_proj`,
`unet`, `vae`): the task freezes and unfreezes parts by them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from wegen_jax.models.eva import EVAVisionTower
from wegen_jax.models.llm import LLM
from wegen_jax.models.projectors import InputProjector, OutputProjector, avg_pool_tokens
from wegen_jax.models.unet import UNet2DConditionModel
from wegen_jax.models.patch_autoencoder import PatchAutoencoder, PatchAutoencoderConfig
from wegen_jax.models.vae import AutoencoderKL
from wegen_jax.systems.wegen.config import WeGenConfig


class WeGen(nnx.Module):
  def __init__(self, cfg: WeGenConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    width, hidden = cfg.vision.width, cfg.llm.hidden_size
    pdt = jnp.dtype(cfg.llm.param_dtype)
    self.vision = EVAVisionTower(cfg.vision, rngs=rngs)
    self.input_proj = InputProjector(
      width, hidden, cfg.num_image_tokens, dtype=jnp.dtype(cfg.llm.dtype), param_dtype=pdt, rngs=rngs
    )
    self.llm = LLM(cfg.llm, rngs=rngs)
    self.output_proj = OutputProjector(hidden, width, dtype=jnp.dtype(cfg.llm.dtype), param_dtype=pdt, rngs=rngs)
    self.unet = UNet2DConditionModel(cfg.unet, rngs=rngs)
    autoencoder = PatchAutoencoder if isinstance(cfg.vae, PatchAutoencoderConfig) else AutoencoderKL
    self.vae = autoencoder(cfg.vae, rngs=rngs)

  def image_features(self, pixels: jax.Array, frozen: bool = True) -> jax.Array:
    """CLIP-normalised pixels [..., 3, S, S] -> avg-pooled features [..., Q, width] (float32).
    The tower is frozen (no gradient flows into it) except in a stage 1 with
    cfg.detokenizer_trains_vision."""
    lead = pixels.shape[:-3]
    tokens = self.vision(pixels.reshape((-1,) + pixels.shape[-3:]))
    pooled = avg_pool_tokens(tokens, self.cfg.num_image_tokens).astype(jnp.float32)
    pooled = pooled.reshape(lead + pooled.shape[1:])
    return jax.lax.stop_gradient(pooled) if frozen else pooled

  def project_in(self, features: jax.Array) -> jax.Array:
    """Pooled features [..., Q, width] -> LLM input embeddings (the projector's pool is already done)."""
    return self.input_proj.proj(features)

  def feedback(self, hidden: jax.Array) -> jax.Array:
    """input_proj(output_proj(h)): the embedding fed back at each generated image position."""
    return self.project_in(self.output_proj(hidden))

  def edit_base(self, features: jax.Array, valid: jax.Array, segments: jax.Array | None = None) -> jax.Array:
    """What each image slot's predicted features are added to: with cfg.image_residual the
    previous slot's features when that slot is valid and in the same packed sequence (segment
    ids [B, N]), else zeros; without it zeros. features [B, N, Q, C], valid [B, N]."""
    if not self.cfg.image_residual:
      return jnp.zeros_like(features)
    has_prev = valid[:, :-1]
    if segments is not None:
      has_prev = has_prev & (segments[:, :-1] == segments[:, 1:])
    prev = features[:, :-1] * has_prev[..., None, None].astype(features.dtype)
    return jnp.concatenate([jnp.zeros_like(features[:, :1]), prev], axis=1)

  def embed_edit_bases(self, embeds, bases, image_token_positions, is_target) -> jax.Array:
    """cfg.image_inplace: each target slot's edit base [B, N, Q, C], projected, added to the
    embeddings [B, T, E] at the positions whose states predict its tokens (`<img_i>` - 1)."""
    if not self.cfg.image_inplace:
      return embeds
    at = _slot_index(image_token_positions - 1, is_target, embeds.shape[1])
    return embeds.at[at].add(self.project_in(bases).astype(embeds.dtype), mode="drop")

  def embed_inputs(self, input_ids, features, image_token_positions, image_valid) -> jax.Array:
    """Token embeddings with the projected features of every valid image slot written at its
    Q `<img_i>` positions (added to the `<img_i>` embeddings with cfg.image_index_embeddings).
    features [B, N, Q, width], positions [B, N, Q], valid [B, N]."""
    embeds = self.llm.embed_tokens(input_ids)
    proj = self.project_in(features).astype(embeds.dtype)
    at = _slot_index(image_token_positions, image_valid, input_ids.shape[1])
    if self.cfg.image_index_embeddings:
      return embeds.at[at].add(proj, mode="drop")
    return embeds.at[at].set(proj, mode="drop")

  def condition(self, features: jax.Array) -> tuple[jax.Array, dict]:
    """UNet conditioning from 64 features [M, Q, width]: cross-attention on the tokens, pooled
    text_embeds = their mean, time_ids zeros (as WeGen trains; SDXL's pipeline would pass sizes)."""
    kwargs = None
    if self.cfg.unet.addition_embed_type == "text_time":
      kwargs = {"text_embeds": features.mean(axis=1), "time_ids": jnp.zeros((features.shape[0], 6), jnp.float32)}
    return features, kwargs

  def spatial_condition(self, features: jax.Array, latent_hw: tuple[int, int]) -> jax.Array | None:
    """With cfg.spatial_features: features [M, Q, width] as a sqrt(Q) x sqrt(Q) grid (row-major,
    the pooled vision grid's order), nearest-upsampled to the latents' [M, width, h, w]; else None."""
    if not self.cfg.spatial_features:
      return None
    m, q, width = features.shape
    side = math.isqrt(q)
    h, w = latent_hw
    if h % side or w % side:
      raise ValueError(f"latents {h}x{w} are not a multiple of the {side}x{side} feature grid")
    grid = jnp.transpose(features.reshape(m, side, side, width), (0, 3, 1, 2))
    return jnp.repeat(jnp.repeat(grid, h // side, axis=2), w // side, axis=3)

  def latents(self, vae_pixels: jax.Array, key) -> jax.Array:
    """[M, 3, V, V] in [-1, 1] -> scaled VAE latents (sampled, no gradient: the VAE is frozen).
    With cfg.vae_encode_slices = n the encoder runs n passes of M/n images (images j, j+n, ...:
    each pass stays spread over the batch shards); the noise is drawn once for all M, so the
    latents do not depend on n."""
    n, m = self.cfg.vae_encode_slices, vae_pixels.shape[0]
    if n <= 1:
      posterior = self.vae.encode(vae_pixels)
    else:
      if m % n:
        raise ValueError(
          f"{m} images per step do not split into vae_encode_slices={n} passes; choose a divisor of the images per step"
        )
      slices = jnp.swapaxes(vae_pixels.reshape((m // n, n) + vae_pixels.shape[1:]), 0, 1)
      posterior = jax.lax.map(self.vae.encode, slices)
      posterior = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape((m,) + x.shape[2:]), posterior)
    return jax.lax.stop_gradient(self.vae.to_latents(posterior.sample(key)))


def _slot_index(positions, mask, length: int):
  """(rows, positions) indexing [B, T, ...] at the image slots' positions [B, N, Q]; slots where
  mask [B, N] is False point past the end (dropped by mode="drop")."""
  pos = jnp.where(mask[..., None], positions, length)
  return jnp.broadcast_to(jnp.arange(pos.shape[0])[:, None, None], pos.shape), pos
