"""The GoT module (SYSTEMS.md §2): MLLM (with LoRA) -> Semantic-Spatial Guidance Module -> SDXL
UNet with 12 input channels, and the frozen VAE.

Attribute names are the optimizer groups: `llm`, `semantic` (Linear E -> E: the UNet's 64
cross-attention tokens), `pooled` (Linear E -> 1280, averaged over the 64 tokens: SDXL's
text_embeds), `unet`, `vae`, `visual`. The MLLM is Qwen2.5-VL (models/qwen2_5_vl.py): its text model `llm`
(models/llm.py, LoRA-wrapped) and, when configured, its frozen vision tower `visual`, whose
features replace the <|image_pad|> embeddings of the source image in editing prompts (with
M-RoPE image positions); the source also reaches the UNet as the reference latent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wegen_jax.layers import Dense
from wegen_jax.layers.lora import apply_lora
from wegen_jax.models.llm import LLM
from wegen_jax.models.patch_autoencoder import PatchAutoencoder, PatchAutoencoderConfig
from wegen_jax.models.qwen2_5_vl import Qwen2_5_VL, Qwen2_5_VLConfig, QwenVisionTransformer, get_rope_index
from wegen_jax.models.unet import UNet2DConditionModel
from wegen_jax.models.vae import AutoencoderKL
from wegen_jax.parallel.sharding import batch_mesh_axes, constrain
from wegen_jax.systems.got.config import GoTConfig


class GoT(nnx.Module):
  def __init__(self, cfg: GoTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    e = cfg.llm.hidden_size
    kw = dict(use_bias=True, dtype=jnp.dtype(cfg.llm.dtype), param_dtype=jnp.dtype(cfg.llm.param_dtype), rngs=rngs)
    self.llm = LLM(cfg.llm, rngs=rngs)
    self.visual = QwenVisionTransformer(cfg.vision, rngs=rngs) if cfg.vision is not None else None
    if cfg.lora_rank:
      apply_lora(
        self.llm, cfg.lora_targets, rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, rngs=rngs
      )
    self.semantic = Dense(e, e, axes=("embed", None), **kw)
    self.pooled = Dense(e, cfg.pooled_dim, axes=("embed", None), **kw)
    self.unet = UNet2DConditionModel(cfg.unet, rngs=rngs)
    autoencoder = PatchAutoencoder if isinstance(cfg.vae, PatchAutoencoderConfig) else AutoencoderKL
    self.vae = autoencoder(cfg.vae, rngs=rngs)

  def vision_grid(self, num_images: int):
    side = self.cfg.vision_image_size // self.cfg.vision.patch_size
    return np.tile(np.asarray([[1, side, side]], np.int64), (num_images, 1))

  def prompt_inputs(self, input_ids, segment_ids, source_patches):
    """(input embeddings, M-RoPE positions [3, B, T]) with each row's source image spliced in
    at its <|image_pad|> tokens. source_patches [B, N, C*T*P*P]: one image per row (rows whose
    prompt has no pad tokens, text-to-image, ignore theirs). The tower runs per image."""
    b = input_ids.shape[0]
    grid = self.vision_grid(1)
    graphdef, state = nnx.split(self.visual)
    tower = lambda pv: nnx.merge(graphdef, state)(pv, grid)
    # Batch-sharded through the tower: unconstrained, the GoT-3B step on v5p-64 ran all 128
    # source images on every chip (f32[128, 16, 1024, 1024] attention scores per chip).
    source_patches = constrain(source_patches, ("batch", None, None))
    feats = jax.vmap(tower, spmd_axis_name=batch_mesh_axes(b))(source_patches)  # [B, Q, E]
    feats = jax.lax.stop_gradient(constrain(feats, ("batch", None, "act_embed")))  # the tower is frozen
    embeds = self.llm.embed_tokens(input_ids)
    mask = input_ids == self.cfg.image_token_id
    index = jnp.clip(jnp.cumsum(mask, axis=1) - 1, 0, feats.shape[1] - 1)
    picked = jnp.take_along_axis(feats, index[..., None], axis=1).astype(embeds.dtype)
    embeds = jnp.where(mask[..., None], picked, embeds)
    positions, _ = get_rope_index(
      input_ids,
      self.vision_grid(b),
      segment_ids,
      image_token_id=self.cfg.image_token_id,
      spatial_merge_size=self.cfg.vision.spatial_merge_size,
    )
    return embeds, positions

  def mllm(self, input_ids, positions=None, segment_ids=None, source_patches=None):
    """LLMOutput of the MLLM on token rows; with source_patches (and a vision tower) the
    source images are spliced in and the positions are Qwen2.5-VL's M-RoPE ones."""
    if source_patches is not None and self.visual is not None:
      embeds, positions = self.prompt_inputs(input_ids, segment_ids, source_patches)
      return self.llm.forward(inputs_embeds=embeds, positions=positions, segment_ids=segment_ids)
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
    return self._average_canvases(self.condition_latents(canvases.reshape((b * n,) + canvases.shape[2:])), valid)

  def training_latents(self, target, source, canvases, valid, key):
    """The three VAE inputs of a training step in one encoder pass (one copy of the encoder in the
    compiled step instead of three): target [B, 3, H, W] -> sampled, scaled latents; source ->
    the reference latents; canvases [B, N, 3, H, W] with valid [B, N] -> the spatial latents.
    The same values as target_latents, condition_latents and spatial_latents."""
    b, n = valid.shape
    pixels = jnp.concatenate([target, source, canvases.reshape((b * n,) + canvases.shape[2:])], axis=0)
    posterior = jax.tree.map(jax.lax.stop_gradient, self._encode(pixels))
    mean = posterior.mean.astype(jnp.float32)
    latents = self.vae.to_latents(type(posterior)(posterior.mean[:b], posterior.logvar[:b]).sample(key))
    return latents, mean[b : 2 * b], self._average_canvases(mean[2 * b :], valid)

  def _average_canvases(self, lat, valid):
    b, n = valid.shape
    lat = lat.reshape((b, n) + lat.shape[1:])
    w = valid.astype(jnp.float32)[:, :, None, None, None]
    return jnp.sum(lat * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)

  def target_latents(self, pixels: jax.Array, key) -> jax.Array:
    """Training targets: sampled and scaled latents (as SDXL fine-tuning), no gradient."""
    return jax.lax.stop_gradient(self.vae.to_latents(self._encode(pixels).sample(key)))

  def qwen_vl_view(self) -> Qwen2_5_VL:
    """A Qwen2_5_VL whose vision tower and text model are this model's own modules (not copies),
    for the Qwen2.5-VL converters (convert/hf_qwen2_5_vl.py)."""
    vl_cfg = Qwen2_5_VLConfig(self.llm.cfg, self.cfg.vision, image_token_id=self.cfg.image_token_id)
    view = nnx.eval_shape(lambda: Qwen2_5_VL(vl_cfg, rngs=nnx.Rngs(0)))
    view.visual, view.language_model = self.visual, self.llm
    return view
