"""Backend-independent part of flash attention: block sizes, padding, the custom VJP and
the reference semantics for fully masked rows.

A backend (flash_attention.py for TPU, flash_attention_gpu.py for GPU) supplies two
functions on padded inputs in the model layout q [B,T,H,D], k/v [B,S,K,D]:

    fwd(q, k, v, q_seg, kv_seg, q_offset, *, scale, causal, blocks, interpret) -> (o, lse [B,H,T])
    bwd(q, k, v, q_seg, kv_seg, q_offset, do, lse, delta, *, ...) -> (dq, dk, dv)

Masking inside the kernels: logit kept iff q_seg == kv_seg != 0 and (not causal or
key slot <= q_offset + query index). Masked logits are set to MASK_VALUE; a row that saw
no kept logit ends with running max == MASK_VALUE, and the kernel reports it with
lse = -inf (and output 0). The wrapper then gives such rows what the XLA reference gives
them (a uniform softmax over equal masked logits = the mean of v over the real keys), so
"flash" and "xla" agree everywhere, gradients included.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

MASK_VALUE = float(jnp.finfo(jnp.float32).min)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes; the backward kernels use the *_bwd sizes when set. Lengths are padded up
  to a common multiple of the forward and backward blocks (blocks shrink for short inputs)."""

  block_q: int = 128
  block_kv: int = 128
  block_q_bwd: int | None = None
  block_kv_bwd: int | None = None
  num_warps: int | None = None  # GPU only (Triton); None: 4 for head_dim <= 64 else 8
  num_stages: int = 2  # GPU only

  @property
  def bwd(self) -> tuple[int, int]:
    return self.block_q_bwd or self.block_q, self.block_kv_bwd or self.block_kv


class Backend(NamedTuple):
  name: str
  fwd: Callable
  bwd: Callable
  fit_block: Callable[[int, int], int]  # (configured block, length) -> block to use


class Blocks(NamedTuple):
  """Concrete (static) block sizes for one call."""

  q: int
  kv: int
  q_bwd: int
  kv_bwd: int
  num_warps: int | None
  num_stages: int


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def _pad_len(x, length: int, axis: int = 1):
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, pad)


def flash_attention(
  backend: Backend,
  q,
  k,
  v,
  *,
  causal: bool = False,
  q_offset=0,
  q_segment_ids=None,
  kv_segment_ids=None,
  scale: float | None = None,
  block_sizes: BlockSizes = BlockSizes(),
  interpret: bool = False,
) -> jax.Array:
  """Flash attention with the signature and semantics of the XLA reference."""
  b, t, h, d = q.shape
  s, kh = k.shape[1], k.shape[2]
  if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
    raise ValueError(
      f"flash attention needs k, v [B,S,K,D] matching q [B,T,H,D]; got q {q.shape}, k {k.shape}, v {v.shape}"
    )
  if h % kh:
    raise ValueError(f"{h} query heads are not a multiple of {kh} key/value heads")
  if not (q.dtype == k.dtype == v.dtype):
    raise ValueError(f"flash attention needs one dtype for q, k, v; got {q.dtype}, {k.dtype}, {v.dtype}")
  scale = d**-0.5 if scale is None else float(scale)

  bq_bwd, bkv_bwd = block_sizes.bwd
  fit = backend.fit_block
  blocks = Blocks(
    fit(block_sizes.block_q, t),
    fit(block_sizes.block_kv, s),
    fit(bq_bwd, t),
    fit(bkv_bwd, s),
    block_sizes.num_warps,
    block_sizes.num_stages,
  )
  t_pad = _round_up(t, math.lcm(blocks.q, blocks.q_bwd))
  s_pad = _round_up(s, math.lcm(blocks.kv, blocks.kv_bwd))

  # Padding is segment 0, so padded keys are masked and padded queries are fully masked.
  q_seg = jnp.ones((b, t), jnp.int32) if q_segment_ids is None else q_segment_ids.astype(jnp.int32)
  kv_seg = jnp.ones((b, s), jnp.int32) if kv_segment_ids is None else kv_segment_ids.astype(jnp.int32)
  offset = jnp.broadcast_to(jnp.asarray(q_offset, jnp.int32).reshape(-1), (b,))
  out, lse = _flash(
    backend,
    blocks,
    scale,
    bool(causal),
    bool(interpret),
    _pad_len(q, t_pad),
    _pad_len(k, s_pad),
    _pad_len(v, s_pad),
    _pad_len(q_seg, t_pad),
    _pad_len(kv_seg, s_pad),
    offset,
  )
  out = out[:, :t]

  # Fully masked rows: the reference's uniform softmax, i.e. the mean of v over real keys.
  empty = jnp.isneginf(jnp.swapaxes(lse[:, :, :t], 1, 2))[..., None]  # [B,T,H,1]
  mean_v = jnp.repeat(v.astype(jnp.float32).mean(axis=1), h // kh, axis=1)  # [B,H,D]
  return jnp.where(empty, mean_v[:, None].astype(out.dtype), out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _flash(backend, blocks, scale, causal, interpret, q, k, v, q_seg, kv_seg, offset):
  return backend.fwd(q, k, v, q_seg, kv_seg, offset, scale=scale, causal=causal, blocks=blocks, interpret=interpret)


def _flash_fwd(backend, blocks, scale, causal, interpret, q, k, v, q_seg, kv_seg, offset):
  out, lse = backend.fwd(q, k, v, q_seg, kv_seg, offset, scale=scale, causal=causal, blocks=blocks, interpret=interpret)
  return (out, lse), (q, k, v, q_seg, kv_seg, offset, out, lse)


def _flash_bwd(backend, blocks, scale, causal, interpret, res, cotangents):
  q, k, v, q_seg, kv_seg, offset, out, lse = res
  do = cotangents[0]  # lse is an internal output (only tested for -inf): no cotangent
  do = do.astype(q.dtype)
  delta = jnp.einsum("bthd,bthd->bht", out.astype(jnp.float32), do.astype(jnp.float32))
  dq, dk, dv = backend.bwd(
    q, k, v, q_seg, kv_seg, offset, do, lse, delta, scale=scale, causal=causal, blocks=blocks, interpret=interpret
  )
  return dq, dk, dv, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)
