"""One decoder-only LLM family: Llama-2/3, Qwen2/2.5 (incl. Qwen2.5-VL's text model) and OPT.

The differences between the families are config fields (norm kind and position, MLP kind,
biases, rope vs learned positions, OPT's embedding projection), so conversion, sharding,
decoding and the systems built on top see one model class.

Call conventions:
  model(input_ids) -> logits [B, T, V] (float32)
  model.forward(input_ids | inputs_embeds, positions, segment_ids, cache, cache_index)
      -> LLMOutput(logits, hidden_states, cache)
`inputs_embeds` live in the token-embedding space (HF semantics), which is where WeGen and
GILL splice projected image features.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from wegen_jax.layers import Attention, Dense, Embed, GatedMLP, LayerNorm, MLP, RMSNorm, RopeConfig, cos_sin
from wegen_jax.layers.remat import remat_call, remat_policy
from wegen_jax.layers.scan import scan_blocks
from wegen_jax.layers.short_conv import ShortConv
from wegen_jax.parallel.sharding import constrain


@dataclasses.dataclass(frozen=True)
class LLMConfig:
  family: str  # "llama" | "qwen2" | "opt": the HF layout it converts to
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  norm: str = "rms"  # "rms" | "layer"
  norm_eps: float = 1e-6
  pre_norm: bool = True  # False: OPT-350m-style post-norm blocks
  final_norm: bool = True
  activation: str = "silu"
  gated_mlp: bool = True  # SwiGLU (Llama/Qwen) vs fc1/fc2 (OPT)
  qkv_bias: bool = False
  out_bias: bool = False
  mlp_bias: bool = False
  norm_bias: bool = False  # LayerNorm bias (OPT)
  position_embedding: str = "rope"  # "rope" | "learned"
  rope_theta: float = 10000.0
  rope_scaling: Mapping[str, Any] | tuple | None = None  # stored as sorted (key, value) pairs
  mrope_section: Sequence[int] | None = None
  max_position_embeddings: int = 4096
  learned_position_offset: int = 2  # OPT's positions are shifted by 2
  word_embed_proj_dim: int | None = None
  tie_word_embeddings: bool = False
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  remat: str = "none"  # a policy of layers/remat.py
  attention_impl: str = "xla"
  scan_layers: bool = False  # one scanned layer body (layers/scan.py): fast compiles at 7B
  # > 0: a causal depthwise conv of this width on each attention input (layers/short_conv.py);
  # only for models trained from scratch (no HF/PyTorch layout has it).
  short_conv: int = 0

  def __post_init__(self):
    # Hashable fields: the config is static data of the jitted graph.
    if isinstance(self.rope_scaling, Mapping):
      items = ((k, tuple(v) if isinstance(v, list) else v) for k, v in self.rope_scaling.items())
      object.__setattr__(self, "rope_scaling", tuple(sorted(items)))
    if self.mrope_section is not None:
      object.__setattr__(self, "mrope_section", tuple(self.mrope_section))
    if self.head_dim is None:
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
    if self.num_heads % self.kv_heads:
      raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.kv_heads}")
    remat_policy(self.remat)  # validates the name

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def dim_per_head(self) -> int:
    return self.head_dim

  @property
  def embed_dim(self) -> int:
    return self.word_embed_proj_dim or self.hidden_size

  @property
  def rope(self) -> RopeConfig:
    return RopeConfig(self.dim_per_head, self.rope_theta, self.rope_scaling, self.mrope_section)

  def replace(self, **kw) -> "LLMConfig":
    return dataclasses.replace(self, **kw)


class LLMOutput(NamedTuple):
  logits: jax.Array  # [B, T, V] float32
  hidden_states: jax.Array  # [B, T, E] last hidden states (after the final norm/projection)
  cache: Any = None


def _norm(cfg: LLMConfig, features: int, rngs):
  kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
  if cfg.norm == "rms":
    return RMSNorm(features, eps=cfg.norm_eps, **kw)
  if cfg.norm == "layer":
    return LayerNorm(features, eps=cfg.norm_eps, use_bias=cfg.norm_bias, **kw)
  raise ValueError(f"norm={cfg.norm!r}; choose 'rms' or 'layer'")


class DecoderLayer(nnx.Module):
  def __init__(self, cfg: LLMConfig, *, rngs: nnx.Rngs):
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    self.pre_norm = cfg.pre_norm
    self.attn_norm = _norm(cfg, cfg.hidden_size, rngs)
    self.attn = Attention(
      cfg.hidden_size,
      cfg.num_heads,
      cfg.dim_per_head,
      num_kv_heads=cfg.kv_heads,
      qkv_bias=cfg.qkv_bias,
      out_bias=cfg.out_bias,
      attention_impl=cfg.attention_impl,
      dtype=dtype,
      param_dtype=pdtype,
      rngs=rngs,
    )
    self.short_conv = (
      ShortConv(cfg.hidden_size, cfg.short_conv, dtype=dtype, param_dtype=pdtype, rngs=rngs) if cfg.short_conv else None
    )
    self.mlp_norm = _norm(cfg, cfg.hidden_size, rngs)
    mlp_cls = GatedMLP if cfg.gated_mlp else MLP
    self.mlp = mlp_cls(
      cfg.hidden_size,
      cfg.intermediate_size,
      act=cfg.activation,
      use_bias=cfg.mlp_bias,
      dtype=dtype,
      param_dtype=pdtype,
      rngs=rngs,
    )

  def _attend(self, h, rope, q_offset, q_segment_ids, kv_segment_ids, cache):
    """The short conv (when configured) then attention -> (output, the layer's new cache or None)."""
    conv_state = None
    if self.short_conv is not None:
      h, conv_state = self.short_conv(h, q_segment_ids, None if cache is None else cache["conv"])
    out = self.attn(
      h,
      rope=rope,
      causal=True,
      q_offset=q_offset,
      cache=None if cache is None else {"k": cache["k"], "v": cache["v"]},
      q_segment_ids=q_segment_ids,
      kv_segment_ids=kv_segment_ids,
    )
    if cache is None:
      return out, None
    out, kv = out
    return out, kv if conv_state is None else {**kv, "conv": conv_state}

  def __call__(self, x, rope, q_offset, q_segment_ids, kv_segment_ids, cache=None):
    attend = lambda h: self._attend(h, rope, q_offset, q_segment_ids, kv_segment_ids, cache)
    if self.pre_norm:
      a, cache = attend(self.attn_norm(x))
      x = x + a
      x = x + self.mlp(self.mlp_norm(x))
    else:
      a, cache = attend(x)
      x = self.attn_norm(x + a)
      x = self.mlp_norm(x + self.mlp(x))
    return constrain(x, ("batch", "length", "act_embed")), cache


class LLM(nnx.Module):
  def __init__(self, cfg: LLMConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    kw = dict(dtype=dtype, param_dtype=pdtype, rngs=rngs)
    self.embed = Embed(cfg.vocab_size, cfg.embed_dim, **kw)
    if cfg.position_embedding not in ("rope", "learned"):
      raise ValueError(f"position_embedding={cfg.position_embedding!r}; choose 'rope' or 'learned'")
    self.pos_embed = (
      Embed(cfg.max_position_embeddings + cfg.learned_position_offset, cfg.hidden_size, axes=(None, "embed"), **kw)
      if cfg.position_embedding == "learned"
      else None
    )
    projected = cfg.embed_dim != cfg.hidden_size
    self.proj_in = Dense(cfg.embed_dim, cfg.hidden_size, axes=(None, "embed"), **kw) if projected else None
    self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = _norm(cfg, cfg.hidden_size, rngs) if cfg.final_norm else None
    self.proj_out = Dense(cfg.hidden_size, cfg.embed_dim, axes=("embed", None), **kw) if projected else None
    self.lm_head = (
      None if cfg.tie_word_embeddings else Dense(cfg.embed_dim, cfg.vocab_size, axes=("embed", "vocab"), **kw)
    )

  def init_cache(self, batch: int, max_len: int, dtype=None) -> dict:
    """Empty KV cache: per layer k/v [B, max_len, K, D], plus segment ids (0 = empty slot)."""
    cfg = self.cfg
    dtype = jnp.dtype(dtype or cfg.dtype)
    shape = (batch, max_len, cfg.kv_heads, cfg.dim_per_head)

    def layer_cache(layer):
      c = {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
      if layer.short_conv is not None:
        c["conv"] = layer.short_conv.init_state(batch, dtype)
      return c

    return {
      "layers": [layer_cache(layer) for layer in self.layers],
      "segment_ids": jnp.zeros((batch, max_len), jnp.int32),
    }

  def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
    return self.embed(input_ids)

  def __call__(self, input_ids: jax.Array, **kwargs) -> jax.Array:
    return self.forward(input_ids, **kwargs).logits

  def forward(
    self, input_ids=None, *, inputs_embeds=None, positions=None, segment_ids=None, cache=None, cache_index=0
  ) -> LLMOutput:
    """positions: rope/learned positions [B, T] ([3, B, T] for M-RoPE), default 0..T-1 (+cache_index).
    segment_ids: [B, T] ints, 0 = padding; packed sequences use 1, 2, ...
    cache/cache_index: KV cache from `init_cache`; tokens are written at slot cache_index."""
    cfg = self.cfg
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("pass exactly one of input_ids or inputs_embeds")
    x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(jnp.dtype(cfg.dtype))
    b, t = x.shape[:2]
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t)[None] + cache_index, (b, t))
      if cfg.mrope_section is not None:
        positions = jnp.broadcast_to(positions[None], (3, b, t))
    elif cfg.mrope_section is not None and positions.ndim == 2:  # text positions: all three M-RoPE axes equal
      positions = jnp.broadcast_to(positions[None], (3,) + positions.shape)
    if self.proj_in is not None:
      x = self.proj_in(x)
    rope = None
    if self.pos_embed is not None:
      x = x + self.pos_embed(positions + cfg.learned_position_offset)
    else:
      rope = cos_sin(cfg.rope, positions)
    x = constrain(x, ("batch", "length", "act_embed"))

    kv_segment_ids = segment_ids
    if cache is not None:
      seg = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
      kv_segment_ids = jax.lax.dynamic_update_slice(cache["segment_ids"], seg, (0, cache_index))
      segment_ids = seg
    new_layers = []
    policy = remat_policy(cfg.remat)
    if cache is None and cfg.scan_layers:  # decoding keeps the loop: its cache is per layer
      x = scan_blocks(
        self.layers,
        x,
        lambda l, h: l(h, rope, cache_index, segment_ids, kv_segment_ids)[0],
        remat=cfg.remat != "none",
        remat_policy=policy,
      )
    else:
      for i, layer in enumerate(self.layers):
        layer_cache = None if cache is None else cache["layers"][i]
        if cache is None and cfg.remat != "none":
          x, _ = remat_call(layer, x, rope, cache_index, segment_ids, kv_segment_ids, remat=cfg.remat)
        else:
          x, layer_cache = layer(x, rope, cache_index, segment_ids, kv_segment_ids, layer_cache)
        new_layers.append(layer_cache)
    if self.final_norm is not None:
      x = self.final_norm(x)
    if self.proj_out is not None:
      x = self.proj_out(x)
    logits = self.embed.attend(x) if self.lm_head is None else self.lm_head(x)
    logits = constrain(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))
    new_cache = None if cache is None else {"layers": new_layers, "segment_ids": kv_segment_ids}
    return LLMOutput(logits, x, new_cache)
