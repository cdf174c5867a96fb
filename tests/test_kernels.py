"""Pallas flash attention (TPU and GPU kernels in interpret mode on CPU) against the XLA
reference: outputs and dq/dk/dv over causal/full, q_offset, packed segments with padding
(fully masked rows included), GQA 1/2/4, T != S and lengths that are not block multiples.

Tolerances, relative to the float32 reference's largest magnitude: float32 <= 1e-5;
bfloat16 <= 1e-2 (measured 2.5e-3 to 4.3e-3 for out/dq/dk/dv, the same size as the XLA
reference's own error in bfloat16, 2.6e-3 to 4.1e-3: both round probabilities to bf16
before the value matmul, about one bf16 ulp of 2^-8).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wegen_jax.kernels import BlockSizes
from wegen_jax.kernels import flash_attention as tpu_kernel
from wegen_jax.kernels import flash_attention_gpu as gpu_kernel
from wegen_jax.kernels.common import flash_attention
from wegen_jax.layers.attention import dot_product_attention

BACKENDS = {"tpu": tpu_kernel.BACKEND, "gpu": gpu_kernel.BACKEND}


def _segments(b, n, pad):
  """Two packed sequences then `pad` padding slots (segment 0), shifted per batch row."""
  rows = [[1] * (n // 2 + r) + [2] * (n - n // 2 - r - pad) + [0] * pad for r in range(b)]
  return jnp.asarray(rows, jnp.int32)


def inputs(b, t, s, h, kh, d, dtype=jnp.float32, seed=0):
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  return tuple(
    jax.random.normal(key, shape, jnp.float32).astype(dtype)
    for key, shape in ((kq, (b, t, h, d)), (kk, (b, s, kh, d)), (kv, (b, s, kh, d)))
  )


def out_and_grads(fn, q, k, v, **kw):
  @jax.jit
  def run(q, k, v):
    o, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, **kw), q, k, v)
    return o, vjp(jnp.cos(o.astype(jnp.float32)).astype(o.dtype))

  o, grads = run(q, k, v)
  return (o,) + tuple(grads)


def assert_close(got, want, tol, names=("out", "dq", "dk", "dv")):
  for name, a, b in zip(names, got, want):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert np.isfinite(a).all(), f"{name} has non-finite values"
    err = np.abs(a - b).max() / max(np.abs(b).max(), 1.0)
    assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


# (b, t, s, h, kh, d, causal, q_offset, segments, blocks)
CASES = {
  "causal_offset_gqa2_T!=S": (2, 24, 40, 4, 2, 16, True, (16, 8), False, BlockSizes(16, 16)),
  "causal_segments_pad_gqa4": (2, 33, 33, 4, 1, 16, True, 0, True, BlockSizes(16, 16)),
  "full_segments_cross_bwd_blocks": (1, 20, 50, 4, 4, 16, False, 0, True, BlockSizes(16, 16, 8, 32)),
}
GRID = [("tpu", c) for c in CASES] + [("gpu", "causal_offset_gqa2_T!=S"), ("gpu", "causal_segments_pad_gqa4")]


def _run_case(backend, case, dtype=jnp.float32):
  b, t, s, h, kh, d, causal, offset, segments, blocks = CASES[case]
  q, k, v = inputs(b, t, s, h, kh, d, dtype)
  kw = dict(causal=causal, q_offset=jnp.asarray(offset, jnp.int32))
  if segments:
    kw.update(q_segment_ids=_segments(b, t, 2), kv_segment_ids=_segments(b, s, 3))
  kernel = functools.partial(flash_attention, BACKENDS[backend], block_sizes=blocks, interpret=True)
  return out_and_grads(kernel, q, k, v, **kw), (q, k, v, kw)


@pytest.mark.parametrize("backend,case", GRID, ids=[f"{b}-{c}" for b, c in GRID])
def test_kernel_matches_reference_f32(backend, case):
  got, (q, k, v, kw) = _run_case(backend, case)
  assert_close(got, out_and_grads(dot_product_attention, q, k, v, **kw), 1e-5)


def test_kernel_bf16_within_documented_tolerance():
  got, (q, k, v, kw) = _run_case("tpu", "causal_segments_pad_gqa4", jnp.bfloat16)
  assert all(x.dtype == jnp.bfloat16 for x in got)
  # Reference in float32 on the same bf16-rounded inputs: measures the kernel's own rounding.
  want = out_and_grads(dot_product_attention, *(x.astype(jnp.float32) for x in (q, k, v)), **kw)
  assert_close(got, want, 1e-2)


def test_fully_masked_rows_match_reference_mean_of_v():
  """Padding queries (segment 0) see no key; like the reference they get the mean of v."""
  q, k, v = inputs(1, 16, 16, 2, 2, 16)
  seg = jnp.asarray([[1] * 12 + [0] * 4], jnp.int32)
  out = flash_attention(
    tpu_kernel.BACKEND,
    q,
    k,
    v,
    causal=True,
    q_segment_ids=seg,
    kv_segment_ids=seg,
    block_sizes=BlockSizes(8, 8),
    interpret=True,
  )
  np.testing.assert_allclose(out[0, 12:], jnp.broadcast_to(v[0].mean(0), (4, 2, 16)), atol=1e-6)


def test_bad_shapes_raise_clear_errors():
  q, k, v = inputs(1, 8, 8, 3, 2, 16)
  with pytest.raises(ValueError, match="multiple of 2 key/value heads"):
    flash_attention(tpu_kernel.BACKEND, q, k, v, interpret=True)
  q, k, v = inputs(1, 8, 8, 2, 2, 16)
  with pytest.raises(ValueError, match="one dtype"):
    flash_attention(tpu_kernel.BACKEND, q, k.astype(jnp.bfloat16), v, interpret=True)


@pytest.mark.skipif(jax.default_backend() not in ("tpu", "gpu"), reason="needs a TPU or GPU")
@pytest.mark.parametrize("causal", [False, True])
def test_compiled_kernel_on_accelerator(causal):
  """The real (non-interpret) kernel for this platform, bf16, longer sequences."""
  backend = BACKENDS[jax.default_backend()]
  q, k, v = inputs(2, 1000, 1000, 8, 2, 128, jnp.bfloat16)
  seg = jnp.asarray([[1] * 600 + [2] * 380 + [0] * 20] * 2, jnp.int32)
  kw = dict(causal=causal, q_segment_ids=seg, kv_segment_ids=seg)
  got = out_and_grads(functools.partial(flash_attention, backend, block_sizes=BlockSizes(128, 128)), q, k, v, **kw)
  want = out_and_grads(dot_product_attention, *(x.astype(jnp.float32) for x in (q, k, v)), **kw)
  assert_close(got, want, 2e-2)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_kernels_lower_for_their_hardware(platform, monkeypatch):
  """Without the hardware: Pallas lowers the kernels (fwd and bwd) to Triton IR / Mosaic MLIR
  for the target; catches unsupported ops and indexing. Triton/Mosaic compilation itself
  only runs on the device (test_compiled_kernel_on_accelerator)."""
  if platform == "tpu":  # Mosaic lowering asks the default device for its TPU generation
    tpu_info = pytest.importorskip("jax._src.pallas.mosaic.tpu_info")
    monkeypatch.setattr(tpu_info, "get_device_kind", lambda: "TPU v5e")
    monkeypatch.setattr(tpu_info, "get_num_device_cores", lambda: 1)
  backend = BACKENDS["gpu" if platform == "cuda" else "tpu"]
  blocks = BlockSizes(128, 64, 64, 64) if platform == "cuda" else BlockSizes(256, 256, 128, 128)
  q = jax.ShapeDtypeStruct((2, 384, 12, 64), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((2, 384, 4, 64), jnp.bfloat16)
  seg = jax.ShapeDtypeStruct((2, 384), jnp.int32)

  def step(q, k, v, seg):
    attend = lambda q, k, v: flash_attention(
      backend, q, k, v, causal=True, q_offset=3, q_segment_ids=seg, kv_segment_ids=seg, block_sizes=blocks
    )
    o, vjp = jax.vjp(attend, q, k, v)
    return o, vjp(o)

  text = jax.jit(step).trace(q, k, k, seg).lower(lowering_platforms=(platform,)).as_text()
  for name in ("flash_fwd", "flash_dkv", "flash_dq"):
    assert f"{name}_{'gpu' if platform == 'cuda' else 'tpu'}" in text
