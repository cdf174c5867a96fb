"""The CPU attention ("blocked": query tiles, custom backward) equals the XLA reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wegen_jax.layers import blocked_attention, dot_product_attention, get_attention
from wegen_jax.layers.blocked_attention import _query_tile


def _inputs(b, t, s, h, kh, d, seed=0):
  rng = np.random.RandomState(seed)
  return (
    jnp.asarray(rng.randn(b, t, h, d).astype(np.float32)),
    jnp.asarray(rng.randn(b, s, kh, d).astype(np.float32)),
    jnp.asarray(rng.randn(b, s, kh, d).astype(np.float32)),
  )


@pytest.mark.parametrize(
  "b,t,s,h,kh,d",
  [
    (2, 1024, 1024, 2, 2, 8),  # UNet top level: several query tiles per slice
    (1, 300, 300, 2, 2, 16),  # T not a multiple of the tile (padded last tile)
    (2, 100, 77, 3, 3, 24),  # cross-attention to a 77-token context, T != S
    (1, 37, 300, 4, 2, 8),  # GQA 4 -> 2, odd T, T < S
    (2, 13, 5, 3, 1, 8),  # tiny, multi-query
  ],
)
@pytest.mark.parametrize("scale", [None, 0.3])
def test_values_and_grads_match_reference(b, t, s, h, kh, d, scale):
  q, k, v = _inputs(b, t, s, h, kh, d)
  kw = {} if scale is None else {"scale": scale}
  np.testing.assert_allclose(
    np.asarray(blocked_attention(q, k, v, **kw)), np.asarray(dot_product_attention(q, k, v, **kw)), atol=1e-5, rtol=0
  )
  loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v, **kw)))
  got = jax.jit(jax.grad(loss(blocked_attention), argnums=(0, 1, 2)))(q, k, v)
  want = jax.jit(jax.grad(loss(dot_product_attention), argnums=(0, 1, 2)))(q, k, v)
  for name, g, w in zip("qkv", got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=0, err_msg=f"d{name}")


def test_tiles_cover_odd_sizes():
  assert _query_tile(1024, 1024) == 512  # 512K-element tiles, two per slice
  assert _query_tile(4096, 4096) == 128
  assert _query_tile(256, 256) == 128
  assert _query_tile(300, 300) == 128 and 300 % 128  # last tile padded
  assert _query_tile(5, 5) == 5


def test_registered_and_masked_cases_use_reference():
  q, k, v = _inputs(2, 12, 12, 4, 2, 8)
  assert get_attention("blocked") is blocked_attention
  for kw in ({"causal": True}, {"q_segment_ids": jnp.ones((2, 12), jnp.int32)}):
    np.testing.assert_allclose(
      np.asarray(blocked_attention(q, k, v, **kw)), np.asarray(dot_product_attention(q, k, v, **kw)), atol=1e-6, rtol=0
    )
