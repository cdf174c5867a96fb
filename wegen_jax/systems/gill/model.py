"""The GILL module (SYSTEMS.md §3, github kohjingyu/gill models.py) and MGCC's additions.

Frozen: the OPT LLM (except its [IMG] embedding rows, task.py), the CLIP vision tower, the SD
text encoder, UNet and VAE. Trained: visual_embeddings (CLIP pooled -> 4 visual tokens),
visual_fc / ret_text_fc (retrieval), gen_text_fc (GILLMapper), logit_scale, and with MGCC the
refinement module. The decision head trains apart (the release's decision_model.pth.tar).
Attribute names are the optimizer groups.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from wegen_jax.layers import Dense
from wegen_jax.layers.linear import param
from wegen_jax.models.clip import CLIPTextTower, CLIPVisionTower
from wegen_jax.models.llm import LLM
from wegen_jax.models.patch_autoencoder import PatchAutoencoder, PatchAutoencoderConfig
from wegen_jax.models.unet import UNet2DConditionModel
from wegen_jax.models.vae import AutoencoderKL
from wegen_jax.systems.gill.config import GILLConfig
from wegen_jax.systems.gill.mapper import GILLMapper
from wegen_jax.systems.gill.refine import CrossModalRefinement


def l2_normalize(x, axis=-1):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def redraw_kernels_fan_in(module: nnx.Module, rngs: nnx.Rngs) -> None:
  """Every kernel of `module` redrawn N(0, 1/fan_in) (fan_in: all axes but the last), in place.

  Why, for a random frozen CLIP tower (the tiny configs): its own init draws kernels N(0, 0.02^2)
  (HF's initializer_range, meant to be overwritten by pretrained weights). At width 32 an
  attention or MLP branch then adds ~(0.02 * sqrt(32))^2 = 1% of the LayerNorm-ed stream, so the
  pooled output, the CLS token, stays LN(class + position embedding): the same vector for every
  image (docs/GILL.md has the measured shares). Unit-gain kernels let the CLS read the patches.
  """
  for path, var in nnx.iter_graph(module):
    if isinstance(var, nnx.Param) and path and str(path[-1]) == "kernel":
      value = var.get_value()
      fan_in = math.prod(value.shape[:-1])
      var.set_value(jax.random.normal(rngs.params(), value.shape, value.dtype) / math.sqrt(fan_in))


def vision_tower(cfg: GILLConfig, rngs: nnx.Rngs) -> CLIPVisionTower:
  """The CLIP vision tower as cfg.vision_init draws it."""
  tower = CLIPVisionTower(cfg.vision, rngs=rngs)
  if cfg.vision_init == "fan_in":
    redraw_kernels_fan_in(tower, rngs)
  return tower


class GILL(nnx.Module):
  def __init__(self, cfg: GILLConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    e, v = cfg.llm.embed_dim, cfg.vision.vision.hidden_size
    kw = dict(dtype=jnp.dtype(cfg.llm.dtype), param_dtype=jnp.dtype(cfg.llm.param_dtype), rngs=rngs)
    self.llm = LLM(cfg.llm, rngs=rngs)
    self.vision = vision_tower(cfg, rngs)
    self.visual_embeddings = Dense(v, cfg.num_visual_tokens * e, axes=(None, "embed"), use_bias=True, **kw)
    self.visual_fc = Dense(v, cfg.ret_dim, axes=(None, None), use_bias=True, **kw)
    self.ret_text_fc = Dense(e, cfg.ret_dim, axes=("embed", None), use_bias=True, **kw)
    self.gen_text_fc = GILLMapper(e, cfg.mapper, **kw)
    self.logit_scale = param(rngs, nnx.initializers.constant(math.log(1 / 0.07)), (), kw["param_dtype"], ())
    self.decision = Dense(e, 2, axes=("embed", None), use_bias=True, **kw)  # after Dropout(0.5)
    self.refine = CrossModalRefinement(e, cfg.refine_heads, cfg.refine_layers, **kw) if cfg.refine else None
    self.sd_text = CLIPTextTower(cfg.sd_text, rngs=rngs)
    self.unet = UNet2DConditionModel(cfg.unet, rngs=rngs)
    autoencoder = PatchAutoencoder if isinstance(cfg.vae, PatchAutoencoderConfig) else AutoencoderKL
    self.vae = autoencoder(cfg.vae, rngs=rngs)

  # ------------------------------------------------------------------------------------ inputs

  def image_pooled(self, pixels: jax.Array) -> jax.Array:
    """CLIP-normalised pixels [..., 3, S, S] -> frozen CLIP pooled output [..., 1024] (float32)."""
    lead = pixels.shape[:-3]
    _, pooled = self.vision(pixels.reshape((-1,) + pixels.shape[-3:]))
    return jax.lax.stop_gradient(pooled.astype(jnp.float32).reshape(lead + pooled.shape[-1:]))

  def visual_tokens(self, pooled: jax.Array) -> jax.Array:
    """[..., 1024] -> [..., 4, E] LLM input embeddings."""
    out = self.visual_embeddings(pooled)
    return out.reshape(pooled.shape[:-1] + (self.cfg.num_visual_tokens, -1))

  def embed_inputs(self, input_ids, pooled=None, image_positions=None, image_valid=None) -> jax.Array:
    """Token embeddings with each valid image's 4 visual tokens written at its positions.
    pooled [B, N, 1024], image_positions [B, N, 4], image_valid [B, N]."""
    embeds = self.llm.embed_tokens(input_ids)
    if pooled is None:
      return embeds
    b, length = input_ids.shape
    pos = jnp.where(image_valid[..., None], image_positions, length)  # invalid -> dropped
    rows = jnp.broadcast_to(jnp.arange(b)[:, None, None], pos.shape)
    return embeds.at[rows, pos].set(self.visual_tokens(pooled).astype(embeds.dtype), mode="drop")

  # ----------------------------------------------------------------------------------- outputs

  def img_states(self, hidden, embeds, img_start, context_mask=None):
    """The 8 [IMG] positions from img_start [B]: (LLM states, their input embeddings) [B, 8, E];
    with MGCC's refinement, the states after cross-attending to the context (context_mask [B, T])."""
    idx = img_start[:, None] + jnp.arange(self.cfg.num_img_tokens)[None]
    take = lambda x: jnp.take_along_axis(x, idx[..., None], axis=1)
    h, e = take(hidden), take(embeds)
    if self.refine is not None:
      h = self.refine(h, hidden, context_mask)
    return h, e

  def text_retrieval_embedding(self, h) -> jax.Array:
    """[IMG0] state -> unit 256-d retrieval embedding (the release: ret_text_hidden_fcs on all 8, first kept)."""
    return l2_normalize(self.ret_text_fc(h[:, 0]).astype(jnp.float32))

  def image_retrieval_embedding(self, pooled) -> jax.Array:
    return l2_normalize(self.visual_fc(pooled).astype(jnp.float32))

  def sd_embeddings(self, h, e) -> jax.Array:
    """[B, 8, E] states + input embeddings -> [B, 77, 768] SD prompt embeddings."""
    return self.gen_text_fc(h, e)

  def decide(self, h, rng=None) -> jax.Array:
    """Retrieve-or-generate logits [B, 2] (index 0 retrieve, 1 generate) from the [IMG0] state;
    dropout 0.5 only when an rng is given (training)."""
    x = h[:, 0]
    if rng is not None:
      keep = jax.random.bernoulli(rng, 0.5, x.shape)
      x = jnp.where(keep, x / 0.5, 0).astype(x.dtype)
    return self.decision(x).astype(jnp.float32)

  def sd_text_embeddings(self, ids) -> jax.Array:
    """SD text encoder last hidden states [B, L, 768] (the mapper's targets; CFG's empty prompt)."""
    return jax.lax.stop_gradient(self.sd_text(ids)[0].astype(jnp.float32))

  def phrase_embeddings(self, ids) -> jax.Array:
    """Pooled SD text states of box phrases [..., L] -> [..., 768] (GLIGEN's positive embeddings)."""
    flat = ids.reshape((-1, ids.shape[-1]))
    return jax.lax.stop_gradient(self.sd_text(flat)[1].astype(jnp.float32)).reshape(ids.shape[:-1] + (-1,))
