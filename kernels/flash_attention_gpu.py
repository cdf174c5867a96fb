"""Flash attention for NVIDIA GPUs (Pallas Triton): forward, dK/dV and dQ kernels.

Works in the model layout [B, T, H, D] (no transposes): a program owns one (q block, batch,
head) and loops over kv blocks in-kernel, as Triton kernels do. GQA maps query head h to
kv head h // G in the index maps; the dK/dV program owns one kv head and loops over its G
query heads, so neither k/v nor dk/dv are ever repeated per query head. Query slots
(q_offset + i) come in as an int array so causal loop bounds follow q_offset.
Triton needs power-of-two tiles: head_dim must be a power of two >= 16 (the dispatcher
falls back to XLA otherwise).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from wegen_jax.kernels.common import MASK_VALUE, Backend

_F32 = jnp.float32


def fit_block(block: int, length: int) -> int:
  """Power-of-two blocks (Triton tiles), at least 16 (tensor-core dot minimum)."""
  return min(block, max(16, pl.next_power_of_2(length)))


def _dot(a, b, trans_a=False, trans_b=False):
  return plgpu.dot(a, b, trans_a=trans_a, trans_b=trans_b)


def _mask(qs, ks, qp, k_start, bk, causal):
  mask = (qs[:, None] == ks[None, :]) & (ks[None, :] != 0)
  if causal:
    mask = mask & ((k_start + jnp.arange(bk))[None, :] <= qp[:, None])
  return mask


def _fwd_kernel(q_ref, k_ref, v_ref, qs_ref, ks_ref, qp_ref, o_ref, lse_ref, *, scale, causal, bk):
  bq, d = q_ref.shape
  q, qs, qp = q_ref[...], qs_ref[...], qp_ref[...]

  def body(j, carry):
    acc, m, l = carry
    sl = pl.ds(j * bk, bk)
    s = _dot(q, k_ref[sl, :], trans_b=True).astype(_F32) * scale
    s = jnp.where(_mask(qs, ks_ref[sl], qp, j * bk, bk, causal), s, MASK_VALUE)
    m_new = jnp.maximum(m, s.max(axis=1))
    # Masked logits are MASK_VALUE: they weigh 0 after a real logit, 1 while a row has
    # none (that sum is discarded; see common.py).
    p = jnp.exp(s - m_new[:, None])
    alpha = jnp.exp(m - m_new)
    v = v_ref[sl, :]
    acc = acc * alpha[:, None] + _dot(p.astype(v.dtype), v).astype(_F32)
    return acc, m_new, alpha * l + p.sum(axis=1)

  n = k_ref.shape[0] // bk
  if causal:  # kv blocks past the last query slot of this block are fully masked
    n = jnp.minimum(n, lax.div(jnp.max(qp), bk) + 1)
  init = (jnp.zeros((bq, d), _F32), jnp.full((bq,), MASK_VALUE, _F32), jnp.zeros((bq,), _F32))
  acc, m, l = lax.fori_loop(0, n, body, init)
  empty = m == MASK_VALUE
  l = jnp.where(empty, 1.0, l)
  o_ref[...] = jnp.where(empty[:, None], 0.0, acc / l[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(empty, -jnp.inf, m + jnp.log(l))


def _probs(q, k, qs, ks, qp, lse, k_start, bk, scale, causal):
  s = _dot(q, k, trans_b=True).astype(_F32) * scale
  return jnp.where(_mask(qs, ks, qp, k_start, bk, causal), jnp.exp(s - lse[:, None]), 0.0)


def _dkv_kernel(
  q_ref, k_ref, v_ref, qs_ref, ks_ref, qp_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, scale, causal, bq
):
  bk, d = k_ref.shape
  j = pl.program_id(0)
  k, v, ks = k_ref[...], v_ref[...], ks_ref[...]
  nq = q_ref.shape[0] // bq
  lo = 0
  if causal:  # first q block whose last slot reaches this kv block
    off = jnp.min(qp_ref[pl.ds(0, bq)])
    lo = lax.div(jnp.maximum(j * bk - off, 0), bq)

  acc = (jnp.zeros((bk, d), _F32), jnp.zeros((bk, d), _F32))
  for g in range(q_ref.shape[1]):  # query heads of this kv head (static, small)

    def body(i, carry, g=g):
      dk, dv = carry
      sl = pl.ds(i * bq, bq)
      q, do = q_ref[sl, g, :], do_ref[sl, g, :]
      p = _probs(q, k, qs_ref[sl], ks, qp_ref[sl], lse_ref[g, sl], j * bk, bk, scale, causal)
      dv = dv + _dot(p.astype(do.dtype), do, trans_a=True).astype(_F32)
      dp = _dot(do, v, trans_b=True).astype(_F32)
      ds = p * (dp - delta_ref[g, sl][:, None]) * scale
      return dk + _dot(ds.astype(q.dtype), q, trans_a=True).astype(_F32), dv

    acc = lax.fori_loop(lo, nq, body, acc)
  dk_ref[...] = acc[0].astype(dk_ref.dtype)
  dv_ref[...] = acc[1].astype(dv_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, qs_ref, ks_ref, qp_ref, do_ref, lse_ref, delta_ref, dq_ref, *, scale, causal, bk):
  bq, d = q_ref.shape
  q, do, qs, qp = q_ref[...], do_ref[...], qs_ref[...], qp_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]

  def body(j, dq):
    sl = pl.ds(j * bk, bk)
    k = k_ref[sl, :]
    p = _probs(q, k, qs, ks_ref[sl], qp, lse, j * bk, bk, scale, causal)
    dp = _dot(do, v_ref[sl, :], trans_b=True).astype(_F32)
    ds = p * (dp - delta[:, None]) * scale
    return dq + _dot(ds.astype(k.dtype), k).astype(_F32)

  n = k_ref.shape[0] // bk
  if causal:
    n = jnp.minimum(n, lax.div(jnp.max(qp), bk) + 1)
  dq_ref[...] = lax.fori_loop(0, n, body, jnp.zeros((bq, d), _F32)).astype(dq_ref.dtype)


def _params(blocks, d):
  warps = blocks.num_warps or (4 if d <= 64 else 8)
  return plgpu.CompilerParams(num_warps=warps, num_stages=blocks.num_stages)


def _slots(q_seg, offset):
  return offset[:, None] + jnp.arange(q_seg.shape[1], dtype=jnp.int32)[None, :]


def fwd(q, k, v, q_seg, kv_seg, offset, *, scale, causal, blocks, interpret):
  b, t, h, d = q.shape
  s, g = k.shape[1], h // k.shape[2]
  bq, bk = blocks.q, blocks.kv
  q_spec = pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, i, hi, 0))
  kv_spec = pl.BlockSpec((None, s, None, d), lambda i, bi, hi: (bi, 0, hi // g, 0))
  row_spec = pl.BlockSpec((None, bq), lambda i, bi, hi: (bi, i))
  return pl.pallas_call(
    functools.partial(_fwd_kernel, scale=scale, causal=causal, bk=bk),
    grid=(t // bq, b, h),
    in_specs=[q_spec, kv_spec, kv_spec, row_spec, pl.BlockSpec((None, s), lambda i, bi, hi: (bi, 0)), row_spec],
    out_specs=[q_spec, pl.BlockSpec((None, None, bq), lambda i, bi, hi: (bi, hi, i))],
    out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, t), _F32)],
    compiler_params=_params(blocks, d),
    interpret=interpret,
    name="flash_fwd_gpu",
  )(q, k, v, q_seg, kv_seg, _slots(q_seg, offset))


def bwd(q, k, v, q_seg, kv_seg, offset, do, lse, delta, *, scale, causal, blocks, interpret):
  b, t, h, d = q.shape
  s, kh = k.shape[1], k.shape[2]
  g = h // kh
  bq, bk = blocks.q_bwd, blocks.kv_bwd
  slots = _slots(q_seg, offset)
  params = _params(blocks, d)

  # dK/dV: one program per (kv block, batch, kv head), looping over its query heads.
  group_spec = pl.BlockSpec((None, t, g, d), lambda j, bi, hi: (bi, 0, hi, 0))
  group_rows = pl.BlockSpec((None, g, t), lambda j, bi, hi: (bi, hi, 0))
  all_rows = pl.BlockSpec((None, t), lambda j, bi, hi: (bi, 0))
  kv_spec = pl.BlockSpec((None, bk, None, d), lambda j, bi, hi: (bi, j, hi, 0))
  dk, dv = pl.pallas_call(
    functools.partial(_dkv_kernel, scale=scale, causal=causal, bq=bq),
    grid=(s // bk, b, kh),
    in_specs=[
      group_spec,
      kv_spec,
      kv_spec,
      all_rows,
      pl.BlockSpec((None, bk), lambda j, bi, hi: (bi, j)),
      all_rows,
      group_spec,
      group_rows,
      group_rows,
    ],
    out_specs=[kv_spec, kv_spec],
    out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
    compiler_params=params,
    interpret=interpret,
    name="flash_dkv_gpu",
  )(q, k, v, q_seg, kv_seg, slots, do, lse, delta)

  # dQ: one program per (q block, batch, head), looping over kv blocks.
  q_spec = pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, i, hi, 0))
  kv_all = pl.BlockSpec((None, s, None, d), lambda i, bi, hi: (bi, 0, hi // g, 0))
  row_spec = pl.BlockSpec((None, bq), lambda i, bi, hi: (bi, i))
  head_rows = pl.BlockSpec((None, None, bq), lambda i, bi, hi: (bi, hi, i))
  dq = pl.pallas_call(
    functools.partial(_dq_kernel, scale=scale, causal=causal, bk=bk),
    grid=(t // bq, b, h),
    in_specs=[
      q_spec,
      kv_all,
      kv_all,
      row_spec,
      pl.BlockSpec((None, s), lambda i, bi, hi: (bi, 0)),
      row_spec,
      q_spec,
      head_rows,
      head_rows,
    ],
    out_specs=q_spec,
    out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
    compiler_params=params,
    interpret=interpret,
    name="flash_dq_gpu",
  )(q, k, v, q_seg, kv_seg, slots, do, lse, delta)
  return dq, dk, dv


BACKEND = Backend("gpu", fwd, bwd, fit_block)
