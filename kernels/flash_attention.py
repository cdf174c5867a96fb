"""Flash attention for TPU (Pallas Mosaic): forward, dK/dV and dQ kernels.

Layout inside: [B, H, T, D] (heads before length so each block is a (rows, head_dim)
tile). GQA reads k/v block `h // G` through the index maps, so k/v are never repeated;
dK/dV accumulate over the G query heads of a group in the grid (no per-query-head dK).
Per-row values (segment ids, lse, delta) are broadcast over 128 lanes / 8 sublanes, the
layout Mosaic tiles natively; q_offset [B] is a scalar-prefetch operand (SMEM) so causal
block skipping and the k/v index clamp (no DMA for skipped blocks) can use it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from wegen_jax.kernels.common import MASK_VALUE, Backend, _round_up

LANES, SUBLANES = 128, 8
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_F32 = jnp.float32


def fit_block(block: int, length: int) -> int:
  """Block rows are multiples of 8; a short sequence is one block (the whole padded axis,
  which Mosaic accepts even when it is not a multiple of 128)."""
  return min(block, _round_up(length, SUBLANES))


def _mask(qs_ref, ks_ref, off, q_start, k_start, shape, causal):
  qs = qs_ref[...][:, :1]  # [bq, 1]
  ks = ks_ref[...][:1, :]  # [1, bk]
  mask = (qs == ks) & (ks != 0)
  if causal:
    rows = off + q_start + lax.broadcasted_iota(jnp.int32, shape, 0)
    cols = k_start + lax.broadcasted_iota(jnp.int32, shape, 1)
    mask = mask & (cols <= rows)
  return mask


def _visible(off, i, j, bq, bk):
  """Whether kv block j holds a key at or before the last query slot of q block i."""
  return j * bk <= off + i * bq + bq - 1


def _when_visible(step, causal, off, i, j, bq, bk):
  """Runs `step` unless causal masking hides the whole (q block i, kv block j) tile."""
  if causal:
    pl.when(_visible(off, i, j, bq, bk))(step)
  else:
    step()


def _last_kv_block(off, i, j, bq, bk):
  return jnp.minimum(j, (off + i * bq + bq - 1) // bk)


def _fwd_kernel(
  off_ref, q_ref, k_ref, v_ref, qs_ref, ks_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc, *, scale, causal, bq, bk
):
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  off = off_ref[b]

  @pl.when(j == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, MASK_VALUE, _F32)
    l_sc[...] = jnp.zeros(l_sc.shape, _F32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, _F32)

  def _step():
    s = lax.dot_general(q_ref[...], k_ref[...], _NT, preferred_element_type=_F32) * scale
    s = jnp.where(_mask(qs_ref, ks_ref, off, i * bq, j * bk, s.shape, causal), s, MASK_VALUE)
    m_prev = m_sc[...]
    m_new = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
    # Masked logits equal MASK_VALUE: exp(MASK - m) is 0 once a real logit was seen, and
    # 1 while none was (that sum is discarded: the row ends "empty" or alpha resets it).
    p = jnp.exp(s - m_new[:, :1])
    alpha = jnp.exp(m_prev - m_new)
    l_sc[...] = alpha * l_sc[...] + p.sum(axis=1, keepdims=True)
    m_sc[...] = m_new
    pv = lax.dot(p.astype(v_ref.dtype), v_ref[...], preferred_element_type=_F32)
    acc_sc[...] = acc_sc[...] * alpha[:, :1] + pv

  _when_visible(_step, causal, off, i, j, bq, bk)

  @pl.when(j == pl.num_programs(3) - 1)
  def _done():
    m, l = m_sc[...][:, :1], l_sc[...][:, :1]
    empty = m == MASK_VALUE
    o_ref[...] = jnp.where(empty, 0.0, acc_sc[...] / jnp.where(empty, 1.0, l)).astype(o_ref.dtype)
    lse = jnp.where(empty, -jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l)))
    lse_ref[...] = jnp.broadcast_to(lse, lse_ref.shape)


def _probs(q_ref, k_ref, qs_ref, ks_ref, lse_ref, off, q_start, k_start, scale, causal):
  s = lax.dot_general(q_ref[...], k_ref[...], _NT, preferred_element_type=_F32) * scale
  mask = _mask(qs_ref, ks_ref, off, q_start, k_start, s.shape, causal)
  return jnp.where(mask, jnp.exp(s - lse_ref[...][:, :1]), 0.0)


def _dkv_kernel(
  off_ref,
  q_ref,
  k_ref,
  v_ref,
  qs_ref,
  ks_ref,
  do_ref,
  lse_ref,
  delta_ref,
  dk_ref,
  dv_ref,
  dk_sc,
  dv_sc,
  *,
  scale,
  causal,
  bq,
  bk,
):
  b, j, g, i = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)
  off = off_ref[b]

  @pl.when((g == 0) & (i == 0))
  def _init():
    dk_sc[...] = jnp.zeros(dk_sc.shape, _F32)
    dv_sc[...] = jnp.zeros(dv_sc.shape, _F32)

  def _step():
    p = _probs(q_ref, k_ref, qs_ref, ks_ref, lse_ref, off, i * bq, j * bk, scale, causal)
    do = do_ref[...]
    dv_sc[...] += lax.dot(p.T.astype(do.dtype), do, preferred_element_type=_F32)
    dp = lax.dot_general(do, v_ref[...], _NT, preferred_element_type=_F32)
    ds = p * (dp - delta_ref[...][:, :1]) * scale
    dk_sc[...] += lax.dot(ds.T.astype(q_ref.dtype), q_ref[...], preferred_element_type=_F32)

  _when_visible(_step, causal, off, i, j, bq, bk)

  @pl.when((g == pl.num_programs(3) - 1) & (i == pl.num_programs(4) - 1))
  def _done():
    dk_ref[...] = dk_sc[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _dq_kernel(
  off_ref, q_ref, k_ref, v_ref, qs_ref, ks_ref, do_ref, lse_ref, delta_ref, dq_ref, dq_sc, *, scale, causal, bq, bk
):
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  off = off_ref[b]

  @pl.when(j == 0)
  def _init():
    dq_sc[...] = jnp.zeros(dq_sc.shape, _F32)

  def _step():
    p = _probs(q_ref, k_ref, qs_ref, ks_ref, lse_ref, off, i * bq, j * bk, scale, causal)
    dp = lax.dot_general(do_ref[...], v_ref[...], _NT, preferred_element_type=_F32)
    ds = p * (dp - delta_ref[...][:, :1]) * scale
    dq_sc[...] += lax.dot(ds.astype(k_ref.dtype), k_ref[...], preferred_element_type=_F32)

  _when_visible(_step, causal, off, i, j, bq, bk)

  @pl.when(j == pl.num_programs(3) - 1)
  def _done():
    dq_ref[...] = dq_sc[...].astype(dq_ref.dtype)


def _heads_first(*xs):
  return tuple(x.transpose(0, 2, 1, 3) for x in xs)


def _seg_layout(q_seg, kv_seg):
  b, t = q_seg.shape
  return (
    jnp.broadcast_to(q_seg[:, :, None], (b, t, LANES)),
    jnp.broadcast_to(kv_seg[:, None, :], (b, SUBLANES, kv_seg.shape[1])),
  )


def _rows(x):  # [B,H,T] -> [B,H,T,LANES]
  return jnp.broadcast_to(x[..., None].astype(_F32), x.shape + (LANES,))


def _call(kernel, grid, in_specs, out_specs, out_shape, scratch, semantics, interpret, name):
  return pl.pallas_call(
    kernel,
    out_shape=out_shape,
    name=name,
    interpret=interpret,
    grid_spec=pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1, grid=grid, in_specs=in_specs, out_specs=out_specs, scratch_shapes=scratch
    ),
    compiler_params=pltpu.CompilerParams(dimension_semantics=semantics),
  )


def fwd(q, k, v, q_seg, kv_seg, offset, *, scale, causal, blocks, interpret):
  b, t, h, d = q.shape
  s, g = k.shape[1], h // k.shape[2]
  bq, bk = blocks.q, blocks.kv
  qt, kt, vt = _heads_first(q, k, v)
  qs, ks = _seg_layout(q_seg, kv_seg)

  def kv_block(bi, hi, i, j, off):
    jj = _last_kv_block(off[bi], i, j, bq, bk) if causal else j
    return bi, hi // g, jj, 0

  def ks_block(bi, hi, i, j, off):
    return bi, 0, kv_block(bi, hi, i, j, off)[2]

  q_block = lambda bi, hi, i, j, off: (bi, hi, i, 0)
  kernel = functools.partial(_fwd_kernel, scale=scale, causal=causal, bq=bq, bk=bk)
  out, lse = _call(
    kernel,
    (b, h, t // bq, s // bk),
    [
      pl.BlockSpec((None, None, bq, d), q_block),
      pl.BlockSpec((None, None, bk, d), kv_block),
      pl.BlockSpec((None, None, bk, d), kv_block),
      pl.BlockSpec((None, bq, LANES), lambda bi, hi, i, j, off: (bi, i, 0)),
      pl.BlockSpec((None, SUBLANES, bk), ks_block),
    ],
    [pl.BlockSpec((None, None, bq, d), q_block), pl.BlockSpec((None, None, bq, LANES), q_block)],
    [jax.ShapeDtypeStruct((b, h, t, d), q.dtype), jax.ShapeDtypeStruct((b, h, t, LANES), _F32)],
    [pltpu.VMEM((bq, LANES), _F32), pltpu.VMEM((bq, LANES), _F32), pltpu.VMEM((bq, d), _F32)],
    ("parallel", "parallel", "parallel", "arbitrary"),
    interpret,
    "flash_fwd_tpu",
  )(offset, qt, kt, vt, qs, ks)
  return out.transpose(0, 2, 1, 3), lse[..., 0]


def bwd(q, k, v, q_seg, kv_seg, offset, do, lse, delta, *, scale, causal, blocks, interpret):
  b, t, h, d = q.shape
  s, kh = k.shape[1], k.shape[2]
  g = h // kh
  bq, bk = blocks.q_bwd, blocks.kv_bwd
  qt, kt, vt, dot_ = _heads_first(q, k, v, do)
  qs, ks = _seg_layout(q_seg, kv_seg)
  lse4, delta4 = _rows(lse), _rows(delta)

  # dK/dV: grid (B, K, kv blocks, group heads, q blocks); the last two accumulate.
  q_of = lambda bi, hi, j, gi, i, off: (bi, hi * g + gi, i, 0)
  kv_of = lambda bi, hi, j, gi, i, off: (bi, hi, j, 0)
  dkv = functools.partial(_dkv_kernel, scale=scale, causal=causal, bq=bq, bk=bk)
  dk, dv = _call(
    dkv,
    (b, kh, s // bk, g, t // bq),
    [
      pl.BlockSpec((None, None, bq, d), q_of),
      pl.BlockSpec((None, None, bk, d), kv_of),
      pl.BlockSpec((None, None, bk, d), kv_of),
      pl.BlockSpec((None, bq, LANES), lambda bi, hi, j, gi, i, off: (bi, i, 0)),
      pl.BlockSpec((None, SUBLANES, bk), lambda bi, hi, j, gi, i, off: (bi, 0, j)),
      pl.BlockSpec((None, None, bq, d), q_of),
      pl.BlockSpec((None, None, bq, LANES), q_of),
      pl.BlockSpec((None, None, bq, LANES), q_of),
    ],
    [pl.BlockSpec((None, None, bk, d), kv_of), pl.BlockSpec((None, None, bk, d), kv_of)],
    [jax.ShapeDtypeStruct(kt.shape, k.dtype), jax.ShapeDtypeStruct(vt.shape, v.dtype)],
    [pltpu.VMEM((bk, d), _F32), pltpu.VMEM((bk, d), _F32)],
    ("parallel", "parallel", "parallel", "arbitrary", "arbitrary"),
    interpret,
    "flash_dkv_tpu",
  )(offset, qt, kt, vt, qs, ks, dot_, lse4, delta4)

  # dQ: grid (B, H, q blocks, kv blocks); the last accumulates.
  def kv_block(bi, hi, i, j, off):
    jj = _last_kv_block(off[bi], i, j, bq, bk) if causal else j
    return bi, hi // g, jj, 0

  q_block = lambda bi, hi, i, j, off: (bi, hi, i, 0)
  dqk = functools.partial(_dq_kernel, scale=scale, causal=causal, bq=bq, bk=bk)
  (dq,) = _call(
    dqk,
    (b, h, t // bq, s // bk),
    [
      pl.BlockSpec((None, None, bq, d), q_block),
      pl.BlockSpec((None, None, bk, d), kv_block),
      pl.BlockSpec((None, None, bk, d), kv_block),
      pl.BlockSpec((None, bq, LANES), lambda bi, hi, i, j, off: (bi, i, 0)),
      pl.BlockSpec((None, SUBLANES, bk), lambda bi, hi, i, j, off: (bi, 0, kv_block(bi, hi, i, j, off)[2])),
      pl.BlockSpec((None, None, bq, d), q_block),
      pl.BlockSpec((None, None, bq, LANES), q_block),
      pl.BlockSpec((None, None, bq, LANES), q_block),
    ],
    [pl.BlockSpec((None, None, bq, d), q_block)],
    [jax.ShapeDtypeStruct(qt.shape, q.dtype)],
    [pltpu.VMEM((bq, d), _F32)],
    ("parallel", "parallel", "parallel", "arbitrary"),
    interpret,
    "flash_dq_tpu",
  )(offset, qt, kt, vt, qs, ks, dot_, lse4, delta4)
  return _heads_first(dq, dk, dv)


BACKEND = Backend("tpu", fwd, bwd, fit_block)
