"""Rotary position embeddings (HF "rotate_half" convention).

Positions are passed in, never derived here, so callers can use packed sequences,
left-padded decoding, or Qwen2.5-VL's 3-axis M-RoPE (positions shaped [3, B, T] with
`mrope_section`). Supported scalings: default, linear, llama3.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  head_dim: int
  theta: float = 10000.0
  scaling: Mapping[str, Any] | None = None  # HF `rope_parameters`/`rope_scaling` dict
  mrope_section: Sequence[int] | None = None  # e.g. (16, 24, 24) for Qwen2.5-VL


def inverse_frequencies(cfg: RopeConfig) -> np.ndarray:
  """Per-pair inverse frequencies [head_dim // 2], float32, with the configured scaling."""
  dim = cfg.head_dim
  inv_freq = 1.0 / (cfg.theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
  inv_freq = inv_freq.astype(np.float32)
  scaling = dict(cfg.scaling or {})
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  if kind in ("default", None, "mrope"):
    return inv_freq
  if kind == "linear":
    return (inv_freq / scaling["factor"]).astype(np.float32)
  if kind == "llama3":
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)
  raise NotImplementedError(
    f"rope scaling type {kind!r} is not supported (supported: default, linear, llama3); "
    "convert the checkpoint's config or add the scaling to wegen_jax/layers/rotary.py"
  )


def cos_sin(cfg: RopeConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
  """cos/sin tables [B, T, head_dim] for integer positions [B, T] (or [3, B, T] for M-RoPE)."""
  inv_freq = jnp.asarray(inverse_frequencies(cfg))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [..., B, T, D/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)  # [..., B, T, D]
  cos, sin = jnp.cos(emb), jnp.sin(emb)
  if cfg.mrope_section is not None:
    if positions.ndim != 3:
      raise ValueError(f"M-RoPE needs positions shaped [3, B, T], got {positions.shape}")
    # Qwen2-VL: the head dims are split into (t, h, w) sections, each rotated by its own axis.
    bounds = np.cumsum(list(cfg.mrope_section) * 2)[:-1]
    pick = lambda t: jnp.concatenate([part[i % 3] for i, part in enumerate(jnp.split(t, bounds, axis=-1))], axis=-1)
    cos, sin = pick(cos), pick(sin)
  return cos, sin


def _rotate_half(x: jax.Array) -> jax.Array:
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates x [B, T, H, D] by cos/sin [B, T, D]; computed in float32."""
  c, s = cos[:, :, None, :], sin[:, :, None, :]
  x32 = x.astype(jnp.float32)
  return (x32 * c + _rotate_half(x32) * s).astype(x.dtype)
