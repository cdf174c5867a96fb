"""Picks an attention implementation per call and runs kernels per shard.

attention_impl "auto": the Pallas kernel for the platform where it pays, else the XLA
reference (CPU, decode with T == 1, a [T, S] score matrix smaller than AUTO_MIN_SEQ^2, e.g.
short sequences or the UNet's cross-attention onto 64-77 tokens, which the kernel would pad
to a whole kv block; head_dim or dtype a kernel does not support). Where "auto" falls back
to XLA with a large score matrix (the SDXL VAE's single 512-wide head over 16k tokens: 1 GiB
of float32 scores per image) the reference runs over query chunks, each rematerialised, so
at most one chunk's scores live. "flash": the kernel whenever one supports the call, on CPU
the TPU kernel in Pallas interpret mode (slow; for tests). Under
wegen_jax.parallel.activation_sharding the kernel runs inside jax.shard_map over the
active mesh: batch over the rules' "batch" axes, heads over "act_heads" (kept whole when
the kv heads cannot be split the same way, so GQA groups stay on one shard).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from wegen_jax.kernels.common import BlockSizes, flash_attention
from wegen_jax.layers.attention import dot_product_attention
from wegen_jax.parallel.sharding import active_sharding, logical_to_spec

AUTO_MIN_SEQ = 1024  # T * S below its square: XLA's fused attention is as fast and the scores are small
CHUNKED_MIN_SCORES = 4096 * 4096  # "auto" on XLA: query-chunk score matrices at least this big
CHUNK_SCORES = 1 << 24  # elements per (batch, head) score chunk: 64 MiB in float32
KERNEL_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
# Untuned starting points (no accelerator has run these yet); override per model with
# make_attention(block_sizes=...).
DEFAULT_BLOCKS = {
  "tpu": BlockSizes(block_q=512, block_kv=512, block_q_bwd=256, block_kv_bwd=256),
  "gpu": BlockSizes(block_q=128, block_kv=64, block_q_bwd=64, block_kv_bwd=64),
}


@dataclasses.dataclass(frozen=True)
class Choice:
  kernel: str  # "xla", "tpu" or "gpu"
  interpret: bool
  reason: str


def _backend(name: str):
  if name == "tpu":
    from wegen_jax.kernels import flash_attention as mod
  else:
    from wegen_jax.kernels import flash_attention_gpu as mod
  return mod.BACKEND


def head_dim_supported(kernel: str, d: int) -> bool:
  if kernel == "gpu":  # Triton tiles are powers of two; 16 is the tensor-core dot minimum
    return 16 <= d <= 256 and d & (d - 1) == 0
  return d % 8 == 0 and d <= 256


def current_platform() -> str:
  active = active_sharding()
  if active is not None:
    return active[0].devices.flat[0].platform
  return jax.default_backend()


def choose(
  q_shape, kv_shape, dtype, *, mode: str = "auto", platform: str | None = None, backend: str | None = None
) -> Choice:
  """Which implementation runs for these shapes; `backend` forces the kernel family."""
  if mode not in ("auto", "flash"):
    raise ValueError(f"attention dispatch mode must be 'auto' or 'flash', got {mode!r}")
  platform = platform or current_platform()
  t, d, s = q_shape[1], q_shape[3], kv_shape[1]
  accelerated = platform in ("tpu", "gpu")
  kernel = backend or (platform if accelerated else "tpu")
  if mode == "auto":
    if not accelerated:
      return Choice("xla", False, f"no kernel pays on {platform}")
    if t == 1:
      return Choice("xla", False, "decode step (T == 1)")
    if t * s < AUTO_MIN_SEQ**2:
      return Choice("xla", False, f"[T, S] = [{t}, {s}] scores < {AUTO_MIN_SEQ}^2")
  if not head_dim_supported(kernel, d):
    return Choice("xla", False, f"head_dim {d} unsupported by the {kernel} kernel")
  if jnp.dtype(dtype) not in [jnp.dtype(x) for x in KERNEL_DTYPES]:
    return Choice("xla", False, f"dtype {jnp.dtype(dtype)} unsupported by the kernels")
  interpret = kernel != platform
  return Choice(kernel, interpret, "interpret mode" if interpret else f"{kernel} kernel")


def _shard_specs(b: int, h: int, kh: int):
  """(batch axes, head axes) over the active mesh, or None when nothing is sharded."""
  active = active_sharding()
  if active is None:
    return None
  mesh, rules = active
  batch = logical_to_spec(("batch",), (b,), mesh, rules)[0]
  heads = logical_to_spec(("act_heads",), (h,), mesh, rules)[0]
  if heads != logical_to_spec(("act_heads",), (kh,), mesh, rules)[0]:
    heads = None  # q and kv heads must split alike for GQA groups to stay local
  as_set = lambda a: set() if a is None else ({a} if isinstance(a, str) else set(a))
  if as_set(batch) & as_set(heads):
    heads = None
  if batch is None and heads is None:
    return None
  return mesh, batch, heads


def attention(
  q,
  k,
  v,
  *,
  causal: bool = False,
  q_offset=0,
  q_segment_ids=None,
  kv_segment_ids=None,
  scale: float | None = None,
  mode: str = "auto",
  block_sizes: BlockSizes | None = None,
  backend: str | None = None,
) -> jax.Array:
  """The attention seam's signature; dispatches per `choose`."""
  choice = choose(q.shape, k.shape, q.dtype, mode=mode, backend=backend)
  if choice.kernel == "xla" or not (q.dtype == k.dtype == v.dtype):
    if mode == "auto" and q.shape[1] * k.shape[1] >= CHUNKED_MIN_SCORES:
      return chunked_reference(
        q,
        k,
        v,
        causal=causal,
        q_offset=q_offset,
        q_segment_ids=q_segment_ids,
        kv_segment_ids=kv_segment_ids,
        scale=scale,
      )
    return dot_product_attention(
      q, k, v, causal=causal, q_offset=q_offset, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, scale=scale
    )
  b, t, h, _ = q.shape
  s, kh = k.shape[1], k.shape[2]
  blocks = block_sizes or DEFAULT_BLOCKS[choice.kernel]
  kernel = functools.partial(
    flash_attention, _backend(choice.kernel), causal=causal, scale=scale, block_sizes=blocks, interpret=choice.interpret
  )
  q_seg = jnp.ones((b, t), jnp.int32) if q_segment_ids is None else q_segment_ids
  kv_seg = jnp.ones((b, s), jnp.int32) if kv_segment_ids is None else kv_segment_ids
  offset = jnp.broadcast_to(jnp.asarray(q_offset, jnp.int32).reshape(-1), (b,))
  run = lambda q, k, v, qs, ks, off: kernel(q, k, v, q_offset=off, q_segment_ids=qs, kv_segment_ids=ks)

  specs = _shard_specs(b, h, kh)
  if specs is not None:
    mesh, batch, heads = specs
    x, rows = P(batch, None, heads, None), P(batch, None)
    # check_vma off: pallas_call outputs carry no varying-axes annotation.
    run = jax.shard_map(run, mesh=mesh, in_specs=(x, x, x, rows, rows, P(batch)), out_specs=x, check_vma=False)
  return run(q, k, v, q_seg, kv_seg, offset)


def chunked_reference(
  q,
  k,
  v,
  *,
  causal: bool = False,
  q_offset=0,
  q_segment_ids=None,
  kv_segment_ids=None,
  scale: float | None = None,
  chunk: int | None = None,
) -> jax.Array:
  """dot_product_attention over query chunks of `chunk` rows (default: CHUNK_SCORES // S), one
  `lax.map` step each under `jax.checkpoint`: the forward keeps one chunk's [B, H, chunk, S]
  scores alive, the backward recomputes them chunk by chunk. Exact (each row's softmax sees
  every key)."""
  b, t = q.shape[:2]
  s = k.shape[1]
  chunk = min(t, chunk or max(128, CHUNK_SCORES // s))
  n = -(-t // chunk)
  pad = n * chunk - t
  offset = jnp.broadcast_to(jnp.asarray(q_offset, jnp.int32).reshape(-1), (b,))
  q_seg = jnp.ones((b, t), jnp.int32) if q_segment_ids is None else q_segment_ids
  # padded query rows see every key (segment 1, not 0: no all-masked rows) and are dropped
  qc = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, n, chunk, *q.shape[2:]).swapaxes(0, 1)
  segc = jnp.pad(q_seg, ((0, 0), (0, pad)), constant_values=1).reshape(b, n, chunk).swapaxes(0, 1)

  @jax.checkpoint
  def one(args):
    i, q_i, seg_i = args
    return dot_product_attention(
      q_i,
      k,
      v,
      causal=causal,
      q_offset=offset + i * chunk,
      q_segment_ids=None if q_segment_ids is None and kv_segment_ids is None else seg_i,
      kv_segment_ids=kv_segment_ids,
      scale=scale,
    )

  out = jax.lax.map(one, (jnp.arange(n), qc, segc))
  return out.swapaxes(0, 1).reshape(b, n * chunk, *q.shape[2:])[:, :t]


def make_attention(mode: str = "flash", *, block_sizes: BlockSizes | None = None, backend: str | None = None):
  """An attention function with fixed dispatch settings, for register_attention."""
  return functools.partial(attention, mode=mode, block_sizes=block_sizes, backend=backend)
