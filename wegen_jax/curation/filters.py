"""Per-frame quality measures and per-step pair tests used by the selection (select.py)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def downsample(frames: np.ndarray, size: int) -> np.ndarray:
  """Box-downsampled uint8 colour frames [T, size, size, 3] (frames are square after decoding); the analysis
  (shots, motion, quality, built-in features) runs on these, so its cost does not grow with frame_size."""
  f = frames.shape[1] // size
  if f <= 1 or frames.shape[1] % size:
    return frames
  return np.stack([np.asarray(Image.fromarray(fr).reduce(f)) for fr in frames])  # PIL's C box filter


def grey(small: np.ndarray) -> np.ndarray:
  """Grey frames in [0, 1]."""
  return small.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0


def sharpness(g: np.ndarray) -> np.ndarray:
  """Variance of the 4-neighbour Laplacian on grey 0..255 (low = blurry)."""
  x = g * 255.0
  lap = x[:, 1:-1, :-2] + x[:, 1:-1, 2:] + x[:, :-2, 1:-1] + x[:, 2:, 1:-1] - 4 * x[:, 1:-1, 1:-1]
  return lap.reshape(len(x), -1).var(axis=1)


def contrast(g: np.ndarray) -> np.ndarray:
  """Std of grey 0..255 (near 0 = blank/black frame)."""
  return (g * 255.0).reshape(len(g), -1).std(axis=1)


def motion(ga: np.ndarray, gb: np.ndarray, tau: float) -> float:
  """Share of pixels that changed: 0 for a static pair, near 1 across a cut."""
  return float((np.abs(ga - gb) > tau).mean())


def cosine(fa: np.ndarray, fb: np.ndarray) -> float:
  return float(np.dot(fa, fb))


def near_duplicate(ga: np.ndarray, gb: np.ndarray, threshold: float) -> bool:
  return float(np.abs(ga - gb).mean()) < threshold
