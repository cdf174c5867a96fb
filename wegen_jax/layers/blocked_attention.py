"""Attention for CPU hosts: one (batch, head) slice at a time with a hand-written backward.

XLA's CPU backend materialises the full [B, H, T, S] logits for the reference attention and
autodiff keeps several such tensors alive, which makes the UNet's 1024-4096-token
self-attention memory-bound. Here `lax.map` walks the B*H slices so each [T, S] block stays
in cache, and a custom VJP recomputes the probabilities in the backward pass (flash-attention's
formulas: dS = P * (dO V^T - rowsum(dO * O))). Registered as attention_impl="blocked"; the
masked cases (causal, segment ids) fall back to the XLA reference.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from wegen_jax.layers.attention import dot_product_attention, register_attention


def _probs(q, k):
  logits = jnp.dot(q, k.T, preferred_element_type=jnp.float32)
  e = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  return e / jnp.sum(e, axis=-1, keepdims=True)


@jax.custom_vjp
def _slice_attention(q, k, v):
  """q [T, D] (pre-scaled), k/v [S, D] -> [T, D]."""
  return jnp.dot(_probs(q, k).astype(v.dtype), v)


def _fwd(q, k, v):
  out = _slice_attention(q, k, v)
  return out, (q, k, v, out)


def _bwd(res, d_out):
  q, k, v, out = res
  p = _probs(q, k)
  d_out32 = d_out.astype(jnp.float32)
  dv = jnp.dot(p.T, d_out32)
  dp = jnp.dot(d_out32, v.astype(jnp.float32).T)
  ds = p * (dp - jnp.sum(d_out32 * out.astype(jnp.float32), axis=-1, keepdims=True))
  dq = jnp.dot(ds, k.astype(jnp.float32))
  dk = jnp.dot(ds.T, q.astype(jnp.float32))
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_slice_attention.defvjp(_fwd, _bwd)


def blocked_attention(q, k, v, *, causal: bool = False, q_offset=0, q_segment_ids=None,
                      kv_segment_ids=None, scale: float | None = None) -> jax.Array:
  if causal or q_segment_ids is not None or kv_segment_ids is not None:
    return dot_product_attention(q, k, v, causal=causal, q_offset=q_offset, q_segment_ids=q_segment_ids,
                                 kv_segment_ids=kv_segment_ids, scale=scale)
  b, t, h, d = q.shape
  s, kh = k.shape[1], k.shape[2]
  if kh != h:   # GQA: share each key/value head across its query group
    k, v = jnp.repeat(k, h // kh, axis=2), jnp.repeat(v, h // kh, axis=2)
  scale = d ** -0.5 if scale is None else scale
  heads = lambda x, n: jnp.transpose(x, (0, 2, 1, 3)).reshape(b * h, n, d)
  out = jax.lax.map(lambda a: _slice_attention(*a), (heads(q * scale, t), heads(k, s), heads(v, s)))
  return jnp.transpose(out.reshape(b, h, t, d), (0, 2, 1, 3))


register_attention("blocked", blocked_attention)
