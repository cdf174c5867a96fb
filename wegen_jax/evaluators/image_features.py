"""Feature extractors the metrics share: the FID Inception (clean-fid's preprocessing) and CLIP
(image and text towers from a local transformers directory), jitted once, fixed batch shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from wegen_jax.data.image_preprocess import preprocess_image, resize_uint8

FID_SIZE = 299


def clean_resize(image: np.ndarray, size: int, *, quantize: bool) -> np.ndarray:
  """clean-fid's PIL bicubic resize of a uint8 [H, W, 3] image to size x size. quantize: the
  uint8 image resized as one (an image saved at that size: WeGen's FID at 256); otherwise each
  channel resized in float32 and clipped to [0, 255] (clean-fid's 'clean' mode, to 299)."""
  image = np.asarray(image, np.uint8)
  if quantize:
    return resize_uint8(image, (size, size))
  channels = [
    np.asarray(
      Image.fromarray(image[..., c].astype(np.float32), mode="F").resize((size, size), Image.Resampling.BICUBIC)
    )
    for c in range(3)
  ]
  return np.clip(np.stack(channels, -1), 0, 255).astype(np.float32)


def center_square(image: np.ndarray) -> np.ndarray:
  h, w = image.shape[:2]
  s = min(h, w)
  return image[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]


def _batched(fn, arrays: np.ndarray, batch_size: int) -> np.ndarray:
  """fn over fixed-size batches (the last one padded), so it compiles once."""
  out = []
  for start in range(0, len(arrays), batch_size):
    chunk = arrays[start : start + batch_size]
    pad = batch_size - len(chunk)
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk
    out.append(np.asarray(fn(jnp.asarray(padded)), np.float64)[: len(chunk)])
  return np.concatenate(out) if out else np.zeros((0, 0))


class InceptionFeatures:
  """pool3 features (float64 [N, 2048]) as clean-fid's 'clean' mode: float bicubic to 299,
  then (x - 128) / 128 into the network (its torchscript model's normalisation)."""

  name = "inception-2015-12-05-clean"

  def __init__(self, weights: str | Path, batch_size: int = 50, model=None):
    from wegen_jax.convert.inception import load_fid_inception

    self.model = load_fid_inception(weights) if model is None else model
    self.batch_size = batch_size
    self._forward = nnx.jit(lambda m, x: m(x))

  def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
    x = np.stack([(clean_resize(im, FID_SIZE, quantize=False) - 128.0) / 128.0 for im in images])
    return _batched(lambda v: self._forward(self.model, v), x.astype(np.float32), self.batch_size)


class CLIPFeatures:
  """L2-normalised CLIP embeddings from a transformers CLIPModel directory (config.json, weights,
  tokenizer.json). Images as CLIPProcessor: short side to the tower's size (bicubic), centre
  crop, CLIP mean/std; texts truncated to 77 tokens."""

  def __init__(self, path: str | Path, batch_size: int = 32, model=None):
    import tokenizers

    from wegen_jax.convert.hf_clip import load_hf_clip

    path = Path(path)
    if not (path / "tokenizer.json").is_file():
      raise FileNotFoundError(f"no tokenizer.json in {path}: pass a local copy of the HF CLIP model folder")
    self.model = load_hf_clip(path) if model is None else model
    self.tokenizer = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    self.tokenizer.enable_truncation(self.model.cfg.text.max_position_embeddings)
    self.batch_size = batch_size
    self._images = nnx.jit(lambda m, x: m.get_image_features(x))
    self._texts = nnx.jit(lambda m, ids, mask: m.get_text_features(ids, mask))

  def images(self, images: Sequence[np.ndarray]) -> np.ndarray:
    size = self.model.cfg.vision.image_size
    x = np.stack([preprocess_image(im, size, keep_ratio=True, resample="bicubic") for im in images])
    return _unit(_batched(lambda v: self._images(self.model, v), x, self.batch_size))

  def texts(self, texts: Sequence[str]) -> np.ndarray:
    """Padded to the full context (one compile): padding keys are masked, and the pooled EOS is
    found before any pad (pad = the EOS id, or 0 for the legacy argmax rule)."""
    t = self.model.cfg.text
    pad = 0 if t.eos_token_id == 2 else t.eos_token_id
    rows = np.full((len(texts), 2, t.max_position_embeddings), pad, np.int32)  # [:, 0] ids, [:, 1] mask
    rows[:, 1] = 0
    for row, text in zip(rows, texts):
      ids = self.tokenizer.encode(text).ids
      row[0, : len(ids)], row[1, : len(ids)] = ids, 1
    return _unit(_batched(lambda r: self._texts(self.model, r[:, 0], r[:, 1]), rows, self.batch_size))


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.linalg.norm(x, axis=-1, keepdims=True)
