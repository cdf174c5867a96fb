"""PIL's resize and WeGen's tower inputs, computed on the device from uint8 frames.

The host pipeline (data/image_preprocess.py) resizes with PIL, as the authors' torchvision
transforms do; at 7B sizes that costs ~160 ms and ~50 MB of float32 per row on the host
(docs/PERFORMANCE.md). With `data.device_preprocess` the pipeline ships the curated uint8 frames
instead and the train step makes the same arrays here: PIL's two passes (horizontal, then
vertical) with its filter weights in its 22-bit fixed point and a uint8 rounding after each
pass, so the pixels are PIL's bit for bit (tests/test_device_resize.py), then the float32
normalisation of `preprocess_image`. Each output pixel gathers at most 2 * ceil(support) + 1
input pixels: integer multiply-adds tap by tap, no dense resize matrix.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from wegen_jax.data.image_preprocess import CLIP_MEAN, CLIP_STD

PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c for 8-bit channels


def _bilinear(x: float) -> float:
  x = abs(x)
  return 1.0 - x if x < 1.0 else 0.0


def _bicubic(x: float, a: float = -0.5) -> float:
  x = abs(x)
  if x < 1.0:
    return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
  if x < 2.0:
    return (((x - 5) * x + 8) * x - 4) * a
  return 0.0


FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0)}


@functools.lru_cache(maxsize=64)
def pil_taps(in_size: int, out_size: int, method: str) -> tuple[np.ndarray, np.ndarray]:
  """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for one axis: input indices and
  fixed-point weights, each [out_size, K] (unused taps point at 0 with weight 0)."""
  if method not in FILTERS:
    raise ValueError(f"method={method!r}; choose from {sorted(FILTERS)}")
  fn, support = FILTERS[method]
  scale = in_size / out_size
  filterscale = max(scale, 1.0)
  support *= filterscale
  k = int(math.ceil(support)) * 2 + 1
  index = np.zeros((out_size, k), np.int32)
  weight = np.zeros((out_size, k), np.int32)
  for xx in range(out_size):
    center = (xx + 0.5) * scale
    xmin = max(int(center - support + 0.5), 0)  # C casts truncate toward zero, as int() does
    xmax = min(int(center + support + 0.5), in_size) - xmin
    w = [fn((x + xmin - center + 0.5) * (1.0 / filterscale)) for x in range(xmax)]
    total = 0.0
    for v in w:  # in order, as the C loop sums (bit-equal weights)
      total += v
    w = np.asarray([v / total if total != 0.0 else v for v in w], np.float64)
    fixed = np.where(w < 0, -0.5 + w * (1 << PRECISION_BITS), 0.5 + w * (1 << PRECISION_BITS))
    index[xx, :xmax] = np.arange(xmin, xmin + xmax)
    weight[xx, :xmax] = np.trunc(fixed).astype(np.int32)
  return index, weight


def _pass(x: jax.Array, axis: int, out_size: int, method: str) -> jax.Array:
  """One of PIL's passes along `axis` of uint8 x: rounding and clipping as its clip8."""
  index, weight = pil_taps(x.shape[axis], out_size, method)
  shape = [1] * x.ndim
  shape[axis] = out_size
  acc = jnp.full((), 1 << (PRECISION_BITS - 1), jnp.int32)
  for k in range(index.shape[1]):  # tap by tap: no [..., out, K] tensor (TPU temporaries 4x smaller)
    tap = jnp.take(x, jnp.asarray(index[:, k]), axis=axis).astype(jnp.int32)
    acc = acc + tap * jnp.asarray(weight[:, k]).reshape(shape)
  return jnp.clip(acc >> PRECISION_BITS, 0, 255).astype(jnp.uint8)


def resize_uint8(frames: jax.Array, size: int, method: str = "bicubic") -> jax.Array:
  """uint8 [..., H, W, C] -> [..., size, size, C] exactly as `PIL.Image.resize((size, size), method)`
  (an axis already at `size` is left alone, as PIL does)."""
  if frames.dtype != jnp.uint8:
    raise ValueError(f"frames must be uint8 [..., H, W, C], got {frames.dtype} {frames.shape}")
  h_axis, w_axis = frames.ndim - 3, frames.ndim - 2
  x = frames if frames.shape[w_axis] == size else _pass(frames, w_axis, size, method)
  return x if x.shape[h_axis] == size else _pass(x, h_axis, size, method)


def normalise(frames: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """uint8 [..., H, W, C] -> float32 [..., C, H, W]: `preprocess_image`'s arithmetic."""
  x = frames.astype(jnp.float32) / jnp.float32(255.0)
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return jnp.moveaxis(x, -1, -3)


def tower_inputs(frames: jax.Array, image_size: int, vae_image_size: int) -> tuple[jax.Array, jax.Array]:
  """Curated uint8 frames [..., F, F, 3] -> (pixel_values [..., 3, S, S] for the vision tower,
  vae_pixels [..., 3, V, V] in [-1, 1]): `preprocess_image(f, S)` and `sd_preprocess(f, V)`."""
  pixel_values = normalise(resize_uint8(frames, image_size, "bilinear"), CLIP_MEAN, CLIP_STD)
  vae_pixels = normalise(resize_uint8(frames, vae_image_size, "bicubic"), (0.5,) * 3, (0.5,) * 3)
  return pixel_values, vae_pixels
