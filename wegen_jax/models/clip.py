"""CLIP (transformers `CLIPModel` semantics): vision and text towers, projections, logit scale.

Used by GILL/MGCC (ViT-L/14 pooled image output into the LLM; CLIP-I similarity) and by the
CLIP-T / CLIP-I evaluators. Call conventions (arrays, not HF output objects):
  model.get_image_features(pixel_values [B, 3, H, W]) -> visual_projection(pooled) [B, P]
  model.get_text_features(input_ids [B, T], attention_mask=None) -> text_projection(pooled) [B, P]
  model.vision_model(pixel_values) -> (last_hidden_state [B, 1+N, D], pooled [B, D])
      pooled = post_layernorm(CLS); GILL's "CLIP pooled output"
  model.text_model(input_ids, attention_mask) -> (last_hidden_state [B, T, D], pooled [B, D])
      pooled = the final-normed state at the EOS token
  model(input_ids, pixel_values) -> CLIPOutput with cosine logits scaled by exp(logit_scale)
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from wegen_jax.layers import Dense, Embed, LayerNorm, param
from wegen_jax.layers.linear import default_kernel_init
from wegen_jax.models.vit import PatchEmbed, ViTBlock, as_array, run_blocks
from wegen_jax.parallel.sharding import constrain


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
  image_size: int = 224
  patch_size: int = 14
  num_channels: int = 3
  hidden_size: int = 1024
  num_layers: int = 24
  num_heads: int = 16
  intermediate_size: int = 4096
  activation: str = "quick_gelu"
  norm_eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  vocab_size: int = 49408
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 77
  activation: str = "quick_gelu"
  norm_eps: float = 1e-5
  # 2 = the pre-2023 HF configs: pool at argmax(input_ids) (the EOT id is the largest);
  # otherwise pool at the first occurrence of eos_token_id (transformers' rule).
  eos_token_id: int = 49407


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  text: CLIPTextConfig = CLIPTextConfig()
  vision: CLIPVisionConfig = CLIPVisionConfig()
  projection_dim: int = 768
  logit_scale_init: float = 2.6592
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  attention_impl: str = "xla"

  def replace(self, **kw) -> "CLIPConfig":
    return dataclasses.replace(self, **kw)


class CLIPOutput(NamedTuple):
  logits_per_image: jax.Array  # [B_img, B_txt]
  logits_per_text: jax.Array  # [B_txt, B_img]
  text_embeds: jax.Array  # [B_txt, P], L2-normalised
  image_embeds: jax.Array  # [B_img, P], L2-normalised


def _blocks(hidden, heads, mlp, act, eps, layers, cfg: CLIPConfig, rngs):
  kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
  return nnx.List(
    [
      ViTBlock(
        hidden,
        heads,
        mlp,
        act=act,
        norm_eps=eps,
        post_norm=False,
        qkv_bias=True,
        attention_impl=cfg.attention_impl,
        **kw,
      )
      for _ in range(layers)
    ]
  )


class CLIPVisionTower(nnx.Module):
  def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
    v, self.remat = cfg.vision, cfg.remat
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
    pdtype = jnp.dtype(cfg.param_dtype)
    self.patch_embed = PatchEmbed(v.patch_size, v.num_channels, v.hidden_size, use_bias=False, **kw)
    self.class_embedding = param(rngs, default_kernel_init, (v.hidden_size,), pdtype, ("embed",))
    n = (v.image_size // v.patch_size) ** 2 + 1
    self.position_embedding = param(rngs, default_kernel_init, (n, v.hidden_size), pdtype, (None, "embed"))
    self.pre_norm = LayerNorm(v.hidden_size, eps=v.norm_eps, **kw)
    self.blocks = _blocks(
      v.hidden_size, v.num_heads, v.intermediate_size, v.activation, v.norm_eps, v.num_layers, cfg, rngs
    )
    self.post_norm = LayerNorm(v.hidden_size, eps=v.norm_eps, **kw)

  def __call__(self, pixel_values: jax.Array) -> tuple[jax.Array, jax.Array]:
    pixel_values = as_array(pixel_values)
    x = self.patch_embed(pixel_values)
    if x.shape[1] + 1 != self.position_embedding.shape[0]:
      raise ValueError(
        f"pixels {pixel_values.shape} give {x.shape[1]} patches; the model expects "
        f"{self.position_embedding.shape[0] - 1}"
      )
    cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (x.shape[0], 1, x.shape[2]))
    x = jnp.concatenate([cls, x], axis=1) + self.position_embedding[...].astype(x.dtype)
    x = self.pre_norm(constrain(x, ("batch", "length", "act_embed")))
    x = run_blocks(self.blocks, x, remat=self.remat)
    return x, self.post_norm(x[:, 0])


class CLIPTextTower(nnx.Module):
  def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
    t, self.remat, self.eos_token_id = cfg.text, cfg.remat, cfg.text.eos_token_id
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
    self.token_embedding = Embed(t.vocab_size, t.hidden_size, **kw)
    self.position_embedding = param(
      rngs, default_kernel_init, (t.max_position_embeddings, t.hidden_size), jnp.dtype(cfg.param_dtype), (None, "embed")
    )
    self.blocks = _blocks(
      t.hidden_size, t.num_heads, t.intermediate_size, t.activation, t.norm_eps, t.num_layers, cfg, rngs
    )
    self.final_norm = LayerNorm(t.hidden_size, eps=t.norm_eps, **kw)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None):
    input_ids = jnp.asarray(as_array(input_ids))
    attention_mask = None if attention_mask is None else jnp.asarray(as_array(attention_mask))
    b, t = input_ids.shape
    if t > self.position_embedding.shape[0]:
      raise ValueError(f"sequence length {t} exceeds max_position_embeddings {self.position_embedding.shape[0]}")
    x = self.token_embedding(input_ids)
    x = x + self.position_embedding[:t].astype(x.dtype)
    x = constrain(x, ("batch", "length", "act_embed"))
    # Causal, and padding keys (attention_mask == 0) masked, as transformers' create_causal_mask.
    kv_seg = None if attention_mask is None else attention_mask.astype(jnp.int32)
    q_seg = None if attention_mask is None else jnp.ones((b, t), jnp.int32)
    x = run_blocks(self.blocks, x, remat=self.remat, causal=True, q_segment_ids=q_seg, kv_segment_ids=kv_seg)
    x = self.final_norm(x)
    ids = input_ids.astype(jnp.int32)
    eos = jnp.argmax(ids, axis=-1) if self.eos_token_id == 2 else jnp.argmax(ids == self.eos_token_id, axis=-1)
    return x, x[jnp.arange(b), eos]


class CLIPModel(nnx.Module):
  def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
    self.text_model = CLIPTextTower(cfg, rngs=rngs)
    self.vision_model = CLIPVisionTower(cfg, rngs=rngs)
    self.text_projection = Dense(cfg.text.hidden_size, cfg.projection_dim, axes=("embed", None), **kw)
    self.visual_projection = Dense(cfg.vision.hidden_size, cfg.projection_dim, axes=("embed", None), **kw)
    self.logit_scale = param(rngs, nnx.initializers.constant(cfg.logit_scale_init), (), jnp.dtype(cfg.param_dtype), ())

  def get_text_features(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    """Projected text embeddings [B, projection_dim] (transformers returns them as
    `get_text_features(...).pooler_output`); not normalised."""
    return self.text_projection(self.text_model(input_ids, attention_mask)[1])

  def get_image_features(self, pixel_values: jax.Array) -> jax.Array:
    """Projected image embeddings [B, projection_dim] from NCHW pixels (transformers:
    `get_image_features(...).pooler_output`); not normalised."""
    return self.visual_projection(self.vision_model(pixel_values)[1])

  def __call__(
    self, input_ids: jax.Array, pixel_values: jax.Array, attention_mask: jax.Array | None = None
  ) -> CLIPOutput:
    norm = lambda e: e / jnp.linalg.norm(e, axis=-1, keepdims=True)
    text = norm(self.get_text_features(input_ids, attention_mask))
    image = norm(self.get_image_features(pixel_values))
    logits_per_text = text @ image.T * jnp.exp(self.logit_scale[...]).astype(text.dtype)
    return CLIPOutput(logits_per_text.T, logits_per_text, text, image)
