"""GILLMapper: the 8 [IMG] states -> the 77 x 768 Stable Diffusion text-embedding space.

As the release (gill/layers.py, TextFcLayer 'gill_mapper'): x = hidden + input embedding of each
[IMG] token, Linear(hidden -> 512), a torch.nn.Transformer (batch_first, norm_first, ReLU, no
dropout, final LayerNorms on encoder and decoder) whose decoder reads 77 learned queries, then
Linear(512 -> 768). Attribute names follow nn.Transformer's so the release tables (convert.py)
are renames plus the split of its fused in_proj.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from wegen_jax.layers import Attention, Dense, LayerNorm, MLP
from wegen_jax.layers.linear import param


def _attention(width, heads, kw):
  return Attention(width, heads, width // heads, qkv_bias=True, out_bias=True, **kw)


class EncoderLayer(nnx.Module):
  """Pre-norm: x + sa(norm1(x)), then x + ff(norm2(x))."""

  def __init__(self, width: int, heads: int, mlp_dim: int, *, kw):
    self.self_attn = _attention(width, heads, kw)
    self.norm1 = LayerNorm(width, eps=1e-5, **kw)
    self.norm2 = LayerNorm(width, eps=1e-5, **kw)
    self.mlp = MLP(width, mlp_dim, act="relu", **kw)

  def __call__(self, x):
    x = x + self.self_attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class DecoderLayer(nnx.Module):
  """Pre-norm: self-attention over the queries, cross-attention to the encoder output, ff."""

  def __init__(self, width: int, heads: int, mlp_dim: int, *, kw):
    self.self_attn = _attention(width, heads, kw)
    self.cross_attn = _attention(width, heads, kw)
    self.norm1 = LayerNorm(width, eps=1e-5, **kw)
    self.norm2 = LayerNorm(width, eps=1e-5, **kw)
    self.norm3 = LayerNorm(width, eps=1e-5, **kw)
    self.mlp = MLP(width, mlp_dim, act="relu", **kw)

  def __call__(self, t, memory):
    t = t + self.self_attn(self.norm1(t))
    t = t + self.cross_attn(self.norm2(t), memory)
    return t + self.mlp(self.norm3(t))


class GILLMapper(nnx.Module):
  def __init__(self, in_dim: int, cfg, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    w = cfg.width
    self.fc = Dense(in_dim, w, axes=("embed", None), use_bias=True, **kw)
    self.encoder = nnx.List([EncoderLayer(w, cfg.num_heads, cfg.mlp_dim, kw=kw) for _ in range(cfg.encoder_layers)])
    self.encoder_norm = LayerNorm(w, eps=1e-5, **kw)
    self.decoder = nnx.List([DecoderLayer(w, cfg.num_heads, cfg.mlp_dim, kw=kw) for _ in range(cfg.decoder_layers)])
    self.decoder_norm = LayerNorm(w, eps=1e-5, **kw)
    # torch.randn init, as the release's query_embs
    self.queries = param(rngs, nnx.initializers.normal(1.0), (cfg.num_queries, w), param_dtype, (None, None))
    self.out = Dense(w, cfg.out_dim, axes=(None, "embed"), use_bias=True, **kw)

  def __call__(self, hidden, input_embeds):
    """hidden, input_embeds [B, 8, E] at the [IMG] tokens -> [B, num_queries, out_dim]."""
    x = self.fc(hidden + input_embeds.astype(hidden.dtype))
    for layer in self.encoder:
      x = layer(x)
    memory = self.encoder_norm(x)
    t = jnp.broadcast_to(self.queries[...].astype(x.dtype), (x.shape[0],) + self.queries.shape)
    for layer in self.decoder:
      t = layer(t, memory)
    return self.out(self.decoder_norm(t))
