"""Multi-head / grouped-query attention with a pluggable attention function.

The attention function is the seam for kernels: `dot_product_attention` below is the XLA
reference; Pallas kernels (wegen_jax.kernels) register under other names and the
dispatcher picks one per platform/shape. All implementations share one signature:

    fn(q [B,T,H,D], k [B,S,K,D], v [B,S,K,D], *, causal, q_offset, q_segment_ids,
       kv_segment_ids, scale) -> [B,T,H,D]

Masking is by slot index, not by rope position: query i sits at slot q_offset + i, key j at
slot j; causal keeps j <= slot. Segment ids (0 = padding) keep attention within a packed
sequence and out of padding. This one description covers training, packing and KV-cache
decoding with left-padded prompts.
"""

from __future__ import annotations

import importlib

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from wegen_jax.layers.linear import Dense
from wegen_jax.layers.rotary import apply_rotary

AttentionFn = Callable[..., jax.Array]
_REGISTRY: dict[str, AttentionFn] = {}


def register_attention(name: str, fn: AttentionFn) -> None:
  _REGISTRY[name] = fn


# Packages that register more implementations when imported: the Pallas kernels ("flash",
# "auto"). Looked up by name on first use, so layers never import the kernels that build on them.
PLUGINS = ("wegen_jax.kernels",)


def get_attention(name: str) -> AttentionFn:
  for plugin in PLUGINS:
    if name in _REGISTRY:
      break
    importlib.import_module(plugin)
  if name not in _REGISTRY:
    raise ValueError(f"unknown attention implementation {name!r}; known: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def attention_mask(
  batch: int, q_len: int, kv_len: int, *, causal: bool, q_offset=0, q_segment_ids=None, kv_segment_ids=None
) -> jax.Array | None:
  """Boolean mask [B, 1, T, S] (True = attend), or None when nothing is masked."""
  mask = None
  if causal:
    q_slot = jnp.asarray(q_offset).reshape(-1, 1) + jnp.arange(q_len)[None, :]  # [B|1, T]
    mask = (q_slot[:, :, None] >= jnp.arange(kv_len)[None, None, :])[:, None]
  if q_segment_ids is not None or kv_segment_ids is not None:
    qs = jnp.ones((batch, q_len), jnp.int32) if q_segment_ids is None else q_segment_ids
    ks = jnp.ones((batch, kv_len), jnp.int32) if kv_segment_ids is None else kv_segment_ids
    seg = ((qs[:, :, None] == ks[:, None, :]) & (ks[:, None, :] != 0))[:, None]
    mask = seg if mask is None else mask & seg
  return mask


@jax.custom_vjp
def softmax_last(x: jax.Array) -> jax.Array:
  """Softmax over the last axis whose backward uses only the probabilities: p * (g - sum(g * p)).

  jax.nn.softmax (with jax_softmax_custom_jvp off, the default) differentiates exp(x) / sum as a
  quotient: the backward keeps exp(x) and a broadcast 1 / sum, [B, H, T, S] each, and makes extra
  passes over them (docs/PERFORMANCE.md: the LLM step's attention backward).
  """
  return jax.nn.softmax(x, axis=-1)


def _softmax_last_fwd(x):
  p = jax.nn.softmax(x, axis=-1)
  return p, p


def _softmax_last_bwd(p, g):
  return (p * (g - jnp.sum(g * p, axis=-1, keepdims=True)),)


softmax_last.defvjp(_softmax_last_fwd, _softmax_last_bwd)


def dot_product_attention(
  q, k, v, *, causal: bool = False, q_offset=0, q_segment_ids=None, kv_segment_ids=None, scale: float | None = None
) -> jax.Array:
  """XLA reference attention; softmax in float32; GQA by grouping query heads."""
  b, t, h, d = q.shape
  s, kh = k.shape[1], k.shape[2]
  if h % kh:
    raise ValueError(f"{h} query heads are not a multiple of {kh} key/value heads")
  scale = d**-0.5 if scale is None else scale
  g = h // kh
  # Heads-major layout: each (batch, kv head) is one plain matmul over the (group x time)
  # rows, which XLA on CPU/GPU runs ~2x faster than the grouped einsum on [B, T, H, D].
  qg = q.reshape(b, t, kh, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kh, g * t, d)
  kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, S, D]
  logits = jnp.einsum("bkqd,bksd->bkqs", qg, kt, preferred_element_type=jnp.float32) * scale
  logits = logits.reshape(b, kh, g, t, s)
  mask = attention_mask(
    b, t, s, causal=causal, q_offset=q_offset, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids
  )
  if mask is not None:
    logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
  probs = softmax_last(logits).astype(v.dtype).reshape(b, kh, g * t, s)
  out = jnp.einsum("bkqs,bksd->bkqd", probs, vt)
  return out.reshape(b, kh, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


register_attention("xla", dot_product_attention)


class Attention(nnx.Module):
  """Self- or cross-attention with separate q/k/v/o projections (HF/diffusers layout).

  `kv_features` != `features` gives cross-attention (diffusion UNet); `num_kv_heads` <
  `num_heads` gives GQA. With `cache` (dict k, v [B, S, K, D]) the new keys/values are
  written at slot `q_offset` and attention runs over the whole cache.
  """

  def __init__(
    self,
    features: int,
    num_heads: int,
    head_dim: int,
    *,
    num_kv_heads: int | None = None,
    kv_features: int | None = None,
    out_features: int | None = None,
    qkv_bias: bool = False,
    k_bias: bool | None = None,
    out_bias: bool = False,
    scale: float | None = None,
    attention_impl: str = "xla",
    dtype=None,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.num_heads, self.head_dim = num_heads, head_dim
    self.num_kv_heads = num_kv_heads or num_heads
    self.scale, self.attention_impl = scale, attention_impl
    kv_features = kv_features or features
    k_bias = qkv_bias if k_bias is None else k_bias
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q = Dense(features, num_heads * head_dim, axes=("embed", "heads"), use_bias=qkv_bias, **kw)
    self.k = Dense(kv_features, self.num_kv_heads * head_dim, axes=("embed", "kv_heads"), use_bias=k_bias, **kw)
    self.v = Dense(kv_features, self.num_kv_heads * head_dim, axes=("embed", "kv_heads"), use_bias=qkv_bias, **kw)
    self.o = Dense(num_heads * head_dim, out_features or features, axes=("heads", "embed"), use_bias=out_bias, **kw)

  def __call__(
    self,
    x,
    context=None,
    *,
    rope=None,
    causal: bool = False,
    q_offset=0,
    q_segment_ids=None,
    kv_segment_ids=None,
    cache=None,
  ):
    b, t, _ = x.shape
    context = x if context is None else context
    q = self.q(x).reshape(b, t, self.num_heads, self.head_dim)
    k = self.k(context).reshape(b, context.shape[1], self.num_kv_heads, self.head_dim)
    v = self.v(context).reshape(b, context.shape[1], self.num_kv_heads, self.head_dim)
    if rope is not None:
      cos, sin = rope
      q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    if cache is not None:
      start = (0, q_offset, 0, 0)
      k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start)
      v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)
      cache = {"k": k, "v": v}
      k, v = k.astype(q.dtype), v.astype(q.dtype)
    out = get_attention(self.attention_impl)(
      q,
      k,
      v,
      causal=causal,
      q_offset=q_offset,
      q_segment_ids=q_segment_ids,
      kv_segment_ids=kv_segment_ids,
      scale=self.scale,
    )
    out = self.o(out.reshape(b, t, self.num_heads * self.head_dim))
    return out if cache is None else (out, cache)
