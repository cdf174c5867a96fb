"""Image preprocessing for the vision towers, in numpy (+ PIL for decode/resize), for Grain maps.

Reproduces WeGen's `src/processer/transforms.get_transform` (torchvision on PIL images):
  type 'clip', keep_ratio=False (stages 2/3): Resize((448, 448)) -> ToTensor -> Normalize(CLIP)
  type 'clip', keep_ratio=True  (stage 1):    Resize(448) -> CenterCrop(448) -> ...
  type 'sd': the same with bicubic resampling and Normalize(0.5, 0.5) (the SDXL/VAE branch).
torchvision resizes PIL images with PIL itself (bilinear/bicubic, always antialiased), so we
call PIL the same way and the pixels are identical. Output: float32 CHW in [-~2, ~2]; stack
them into NCHW batches for the towers.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any, Sequence

import grain
import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def load_image(image: Any) -> Image.Image:
  """RGB PIL image from encoded bytes (PNG/JPEG...), a file path, a uint8 HWC array or a PIL image."""
  if isinstance(image, Image.Image):
    img = image
  elif isinstance(image, (bytes, bytearray, memoryview)):
    img = Image.open(io.BytesIO(bytes(image)))
  elif isinstance(image, (str, os.PathLike)):
    if not os.path.isfile(image):
      raise FileNotFoundError(f"image file not found: {image}")
    img = Image.open(image)
  elif isinstance(image, np.ndarray):
    if image.dtype != np.uint8:
      raise ValueError(f"image arrays must be uint8 HWC, got {image.dtype} {image.shape}")
    img = Image.fromarray(image)
  else:
    raise TypeError(f"cannot read an image from {type(image).__name__}")
  return img.convert("RGB")  # WeGen's datasets open every image with .convert('RGB')


def _resize_short_side(img: Image.Image, size: int, resample) -> Image.Image:
  # torchvision Resize(int): the short side becomes `size`, the long side is truncated.
  w, h = img.size
  short, long = (w, h) if w <= h else (h, w)
  new_long = int(size * long / short)
  new_w, new_h = (size, new_long) if w <= h else (new_long, size)
  return img if (new_w, new_h) == (w, h) else img.resize((new_w, new_h), resample)


def _center_crop(img: Image.Image, size: int) -> Image.Image:
  w, h = img.size
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return img.crop((left, top, left + size, top + size))


def preprocess_image(
  image: Any,
  image_size: int = 448,
  *,
  keep_ratio: bool = False,
  resample: str = "bilinear",
  mean: Sequence[float] = CLIP_MEAN,
  std: Sequence[float] = CLIP_STD,
) -> np.ndarray:
  """One image -> float32 [3, image_size, image_size], normalised; defaults = WeGen's EVA input."""
  if resample not in _RESAMPLE:
    raise ValueError(f"resample={resample!r}; choose from {sorted(_RESAMPLE)}")
  img = load_image(image)
  if keep_ratio:
    img = _center_crop(_resize_short_side(img, image_size, _RESAMPLE[resample]), image_size)
  elif img.size != (image_size, image_size):
    img = img.resize((image_size, image_size), _RESAMPLE[resample])
  x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
  x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  return np.ascontiguousarray(x.transpose(2, 0, 1))


def sd_preprocess(image: Any, image_size: int = 1024, *, keep_ratio: bool = False) -> np.ndarray:
  """WeGen's 'sd' transform (VAE input in [-1, 1])."""
  return preprocess_image(
    image, image_size, keep_ratio=keep_ratio, resample="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
  )


@dataclasses.dataclass(frozen=True)
class PreprocessImage(grain.transforms.Map):
  """Grain map: element[key] (encoded bytes, path or uint8 array) -> element[out_key] CHW float32."""

  key: str = "image"
  out_key: str = "pixel_values"
  image_size: int = 448
  keep_ratio: bool = False
  resample: str = "bilinear"
  mean: Sequence[float] = CLIP_MEAN
  std: Sequence[float] = CLIP_STD

  def map(self, element: dict) -> dict:
    if self.key not in element:
      raise KeyError(f"element has no {self.key!r} field (fields: {sorted(element)})")
    out = dict(element)
    out[self.out_key] = preprocess_image(
      element[self.key],
      self.image_size,
      keep_ratio=self.keep_ratio,
      resample=self.resample,
      mean=self.mean,
      std=self.std,
    )
    return out


def resize_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """uint8 [H, W, 3] -> [size[0], size[1], 3] (bicubic; unchanged when already that size)."""
  if image.shape[:2] == tuple(size):
    return image
  return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BICUBIC))
