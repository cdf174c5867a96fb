"""Frame encoders for the identity-consistency filter: frames uint8 [N, H, W, 3] -> unit vectors [N, D].

`thumb_hist` (default) needs nothing: a colour histogram plus a coarse colour thumbnail, which separates
different scenes/subjects well enough for a "same content?" test and is cheap. `clip` uses the project's
CLIP image tower (wegen_jax.convert.load_hf_clip) from a local HF directory; it is imported only when the
config names that directory, so curation never needs JAX models or weights by default.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from PIL import Image

from wegen_jax.data.image_preprocess import preprocess_image


class FrameEncoder(Protocol):
  name: str
  full_resolution: bool  # False: called on the analysis_size thumbnails

  def __call__(self, frames: np.ndarray) -> np.ndarray: ...


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


class ThumbHistEncoder:
  """[joint RGB histogram (bins^3) | thumb x thumb colour thumbnail], each half unit-normalised."""

  name = "thumb_hist"
  full_resolution = False  # the analysis-size thumbnails are plenty for a histogram and an 8x8 layout

  def __init__(self, bins: int = 4, thumb: int = 8):
    self.bins, self.thumb = bins, thumb

  def __call__(self, frames: np.ndarray) -> np.ndarray:
    q = (frames.astype(np.int32) * self.bins) // 256
    code = (q[..., 0] * self.bins + q[..., 1]) * self.bins + q[..., 2]
    n = self.bins**3
    hist = np.stack([np.bincount(c.ravel(), minlength=n) for c in code]).astype(np.float32)
    thumbs = (
      np.stack([np.asarray(Image.fromarray(f).resize((self.thumb, self.thumb), Image.BOX)) for f in frames])
      .reshape(len(frames), -1)
      .astype(np.float32)
    )
    thumbs -= thumbs.mean(axis=1, keepdims=True) * 0.5  # keep some brightness, emphasise layout
    return _unit(np.concatenate([_unit(np.sqrt(hist)), _unit(thumbs)], axis=1))


class ClipEncoder:
  """Adapter for the project's JAX CLIP: load_hf_clip(path).get_image_features(pixel_values NCHW)."""

  name = "clip"
  full_resolution = True  # gets the decoded frames, not the analysis thumbnails

  def __init__(self, path: str, image_size: int = 224, batch_size: int = 32):
    try:
      from wegen_jax.convert import load_hf_clip  # lazy: JAX model code only when asked for
    except ImportError as e:
      raise ImportError(
        "encoder 'clip' needs wegen_jax.convert.load_hf_clip (wegen_jax/models/clip.py); "
        f"it is not importable here: {e}"
      ) from e
    self.model = load_hf_clip(path)
    self.image_size, self.batch_size = image_size, batch_size

  def preprocess(self, frames: np.ndarray) -> np.ndarray:
    # NCHW with CLIP's mean/std, as the HF-layout CLIP expects
    return np.stack([preprocess_image(f, self.image_size, resample="bicubic") for f in frames])

  def __call__(self, frames: np.ndarray) -> np.ndarray:
    out = []
    for i in range(0, len(frames), self.batch_size):
      feats = self.model.get_image_features(self.preprocess(frames[i : i + self.batch_size]))
      out.append(np.asarray(feats, np.float32))
    return _unit(np.concatenate(out, axis=0))


def build_encoder(cfg) -> FrameEncoder:
  if cfg.name == "thumb_hist":
    return ThumbHistEncoder(cfg.get("bins", 4), cfg.get("thumb", 8))
  if cfg.name == "clip":
    if not cfg.get("clip_dir"):
      raise ValueError("encoder 'clip' needs config.encoder.clip_dir (a local HF CLIP directory)")
    return ClipEncoder(cfg.clip_dir, cfg.get("image_size", 224), cfg.get("batch_size", 32))
  raise ValueError(f"unknown frame encoder {cfg.name!r} (thumb_hist, clip)")
