"""Images -> Qwen2-VL / Qwen2.5-VL vision inputs, as transformers' Qwen2VLImageProcessor (PIL backend).

Each image is resized (PIL bicubic) to multiples of patch_size * merge_size with its pixel count
in [min_pixels, max_pixels] (`smart_resize`), rescaled to [0, 1], CLIP-normalised, repeated
temporal_patch_size times and cut into patches ordered by spatial-merge block:
pixel_values [sum of h*w, C*T*P*P] float32 and image_grid_thw [num_images, 3] = (1, h, w) in patches,
the inputs of models/qwen2_5_vl.py. The prompt needs t*h*w / merge_size**2 image-pad tokens per image.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from wegen_jax.data.image_preprocess import CLIP_MEAN, CLIP_STD, load_image, resize_uint8

MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 1280


def smart_resize(
  height: int, width: int, factor: int = 28, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> tuple[int, int]:
  """The processor's target size: multiples of `factor`, aspect ratio kept, area within the bounds."""
  if max(height, width) / min(height, width) > 200:
    raise ValueError(f"image aspect ratio {max(height, width) / min(height, width):.1f} is over 200 ({height}x{width})")
  h, w = round(height / factor) * factor, round(width / factor) * factor
  if h * w > max_pixels:
    beta = math.sqrt(height * width / max_pixels)
    h, w = (
      max(factor, math.floor(height / beta / factor) * factor),
      max(factor, math.floor(width / beta / factor) * factor),
    )
  elif h * w < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
  return h, w


def patchify(image: np.ndarray, patch_size: int = 14, temporal_patch_size: int = 2, merge_size: int = 2) -> np.ndarray:
  """Normalised float [C, H, W] -> [H/P * W/P, C*T*P*P], patches in spatial-merge-block order."""
  c, height, width = image.shape
  gh, gw, m, p = height // patch_size, width // patch_size, merge_size, patch_size
  if gh * p != height or gw * p != width or gh % m or gw % m:
    raise ValueError(f"image size {height}x{width} is not a multiple of patch_size * merge_size = {p * m}")
  x = image.reshape(c, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)  # [gh/m, gw/m, m, m, C, P, P]
  x = np.broadcast_to(x[:, :, :, :, :, None], x.shape[:5] + (temporal_patch_size, p, p))
  return x.reshape(gh * gw, c * temporal_patch_size * p * p)


def qwen_vl_pixels(
  images: Sequence[Any],
  *,
  patch_size: int = 14,
  temporal_patch_size: int = 2,
  merge_size: int = 2,
  min_pixels: int = MIN_PIXELS,
  max_pixels: int = MAX_PIXELS,
  resize: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
  """Images (uint8 HWC arrays, PIL images, paths or encoded bytes) -> (pixel_values, image_grid_thw)."""
  patches, grids = [], []
  mean, std = np.asarray(CLIP_MEAN, np.float32)[:, None, None], np.asarray(CLIP_STD, np.float32)[:, None, None]
  for image in images:
    pixels = np.asarray(load_image(image))
    if resize:
      size = smart_resize(*pixels.shape[:2], patch_size * merge_size, min_pixels, max_pixels)
      pixels = resize_uint8(pixels, size)
    x = (pixels.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255) - mean) / std
    patches.append(patchify(x, patch_size, temporal_patch_size, merge_size))
    grids.append((1, x.shape[1] // patch_size, x.shape[2] // patch_size))
  return np.concatenate(patches).astype(np.float32), np.asarray(grids, np.int64)
