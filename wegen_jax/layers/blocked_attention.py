"""Attention for CPU hosts: query tiles that stay in cache, with a hand-written backward.

XLA's CPU backend materialises the full [B, H, T, S] logits for the reference attention and
autodiff keeps several such tensors alive, which makes the UNet's 1024-4096-token
self-attention memory-bound. Here a loop walks (batch x head) slices and, inside each, tiles
of `tq` queries against all S keys: [tq, S] tiles of up to 512K floats (2 MiB), and at least
two per slice.
The forward saves only the output and the per-row log-sum-exp; the custom VJP recomputes the
probabilities tile by tile (flash-attention's formulas: P = exp(QK^T - lse),
dS = P * (dO V^T - rowsum(dO * O))) and accumulates dK^T, dV^T as [D, S] (so every matmul has
a plain row-major operand; the transposed-LHS form P^T dO is 5x slower on XLA CPU).
Registered as attention_impl="blocked"; the masked cases (causal, segment ids) fall back to
the XLA reference. Float32 throughout (logits, softmax, all gradients).

`cpu_xla_flags()` returns the XLA CPU flag this code is tuned with (512-bit vectors; it
changes no math, only the SIMD width the fusion emitter uses); set it before JAX starts:

    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *cpu_xla_flags()])
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from jax import lax

from wegen_jax.layers.attention import dot_product_attention, register_attention

# One [tq, S] float32 tile: 2 MiB. Measured on a 2-core AVX-512 host (docs/PERFORMANCE.md):
# 512K-element tiles run the 1024-token UNet attention's forward 1.8x and its gradient 1.7x
# faster than 32K tiles (fewer, larger fusions that XLA splits over both cores).
TILE_ELEMENTS = 512 * 1024


def cpu_xla_flags() -> list[str]:
  """XLA flags for CPU hosts (AVX-512 machines): 512-bit vectors in XLA's own loop fusions
  (exp, softmax, normalisations). Numerics are unchanged up to reduction order."""
  return ["--xla_cpu_prefer_vector_width=512"]


def _query_tile(t: int, s: int) -> int:
  tq = max(8, TILE_ELEMENTS // max(s, 1))
  if t >= 16:  # keep two tiles or more: one tile per slice makes the backward 1.6-2.4x slower
    tq = min(tq, t // 2)
  return min(1 << (tq.bit_length() - 1), t)


def _dot_t(a, b):
  """a [M, K] @ b[N, K]^T -> [M, N] in float32."""
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _dot(a, b):
  return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _fwd_slices(q, k, v):
  """q [N, nq, tq, D] (pre-scaled), k/v [N, S, D] -> out [N, nq, tq, D], lse [N, nq, tq]."""

  def one_slice(args):
    qs, ks, vs = args

    def tile(qt):
      logits = _dot_t(qt, ks)
      m = jnp.max(logits, axis=-1, keepdims=True)
      e = jnp.exp(logits - m)
      l = jnp.sum(e, axis=-1, keepdims=True)
      out = _dot(e.astype(vs.dtype), vs) / l
      return out.astype(qt.dtype), (m + jnp.log(l))[:, 0]

    return lax.map(tile, qs)

  return lax.map(one_slice, (q, k, v))


def _bwd_slices(q, k, v, out, lse, d_out):
  def one_slice(args):
    qs, ks, vs, os_, ls, dos = args
    k32, v32 = ks.astype(jnp.float32), vs.astype(jnp.float32)

    def tile(carry, xs):
      dk_t, dv_t = carry  # [D, S]
      qt, ot, lt, dt = xs
      q32, d32 = qt.astype(jnp.float32), dt.astype(jnp.float32)
      p = jnp.exp(_dot_t(q32, k32) - lt[:, None])  # [tq, S]
      dv_t = dv_t + _dot(d32.T, p)
      dp = _dot_t(d32, v32)
      ds = p * (dp - jnp.sum(d32 * ot.astype(jnp.float32), axis=-1, keepdims=True))
      dk_t = dk_t + _dot(q32.T, ds)
      return (dk_t, dv_t), _dot(ds, k32).astype(qt.dtype)

    zeros = jnp.zeros(ks.shape[::-1], jnp.float32)
    (dk_t, dv_t), dq = lax.scan(tile, (zeros, zeros), (qs, os_, ls, dos))
    return dq, dk_t.T.astype(ks.dtype), dv_t.T.astype(vs.dtype)

  return lax.map(one_slice, (q, k, v, out, lse, d_out))


@jax.custom_vjp
def _tiled_attention(q, k, v):
  return _fwd_slices(q, k, v)[0]


def _fwd(q, k, v):
  out, lse = _fwd_slices(q, k, v)
  return out, (q, k, v, out, lse)


def _bwd(res, d_out):
  return _bwd_slices(*res, d_out)


_tiled_attention.defvjp(_fwd, _bwd)


def blocked_attention(
  q, k, v, *, causal: bool = False, q_offset=0, q_segment_ids=None, kv_segment_ids=None, scale: float | None = None
) -> jax.Array:
  if causal or q_segment_ids is not None or kv_segment_ids is not None:
    return dot_product_attention(
      q, k, v, causal=causal, q_offset=q_offset, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, scale=scale
    )
  b, t, h, d = q.shape
  s, kh = k.shape[1], k.shape[2]
  if h % kh:
    raise ValueError(f"{h} query heads are not a multiple of {kh} key/value heads")
  if kh != h:  # GQA: share each key/value head across its query group
    k, v = jnp.repeat(k, h // kh, axis=2), jnp.repeat(v, h // kh, axis=2)
  scale = d**-0.5 if scale is None else scale
  tq = _query_tile(t, s)
  nq = -(-t // tq)
  qh = jnp.transpose(q * jnp.asarray(scale, q.dtype), (0, 2, 1, 3)).reshape(b * h, t, d)
  if nq * tq != t:  # padded query rows get zero cotangents, so they add nothing to dK, dV
    qh = jnp.pad(qh, ((0, 0), (0, nq * tq - t), (0, 0)))
  heads = lambda x: jnp.transpose(x, (0, 2, 1, 3)).reshape(b * h, s, d)
  out = _tiled_attention(qh.reshape(b * h, nq, tq, d), heads(k), heads(v))
  out = out.reshape(b, h, nq * tq, d)[:, :, :t]
  return jnp.transpose(out, (0, 2, 1, 3))


register_attention("blocked", blocked_attention)
