"""Shot-boundary detection by content change between consecutive sampled frames.

A boundary lies before frame t when the colour-histogram distance to frame t-1 is large (a new scene) or when
most pixels change at once (a cut between similar-looking scenes). Thresholds live in config.shots.
"""

from __future__ import annotations

import numpy as np


def colour_hist(frames: np.ndarray, bins: int = 8) -> np.ndarray:
  """Normalised joint RGB histograms [T, bins^3]."""
  q = (frames.astype(np.int32) * bins) // 256
  code = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
  h = np.stack([np.bincount(c.ravel(), minlength=bins**3) for c in code]).astype(np.float32)
  return h / h.sum(axis=1, keepdims=True)


def changed_fraction(a: np.ndarray, b: np.ndarray, tau: float) -> np.ndarray:
  """Share of pixels whose grey level (0..1) differs by more than tau; a, b: [..., H, W] float."""
  return (np.abs(a - b) > tau).mean(axis=(-2, -1))


def detect_shots(frames: np.ndarray, grey: np.ndarray, cfg) -> tuple[list[tuple[int, int]], np.ndarray]:
  """Returns shots as [start, end) over the sampled frames and the per-transition histogram distances."""
  T = len(frames)
  if T < 2:
    return [(0, T)], np.zeros((0,), np.float32)
  h = colour_hist(frames, cfg.hist_bins)
  hist_d = 0.5 * np.abs(h[1:] - h[:-1]).sum(axis=1)
  pix = changed_fraction(grey[1:], grey[:-1], cfg.pixel_tau)
  cut = (hist_d >= cfg.hist_threshold) | (pix >= cfg.pixel_threshold)
  starts = [0] + [int(t) + 1 for t in np.flatnonzero(cut)]
  ends = starts[1:] + [T]
  return list(zip(starts, ends)), hist_d
