"""Detokenizer reconstruction: held-out frames redrawn from their own visual features.

  evals.reconstruction = dict(type="reconstruction", every=0, num_images=32)

WeGen stage 1's task (the image must survive vision tower -> features -> diffusion decoder).
Needs predict functions `validation_images(num)` (uint8 frames) and `reconstruct_images(images,
seed)`; reports the mean absolute error in 0..255 (`frame_mae`) and the images scored.
"""

from __future__ import annotations

import numpy as np

from wegen_jax.data.image_preprocess import resize_uint8
from wegen_jax.evaluators import require_predict_fns


def frame_mae(images, drawn) -> float:
  """Mean absolute error (0..255) of each redrawing against its image (resized to it)."""
  errors = [
    np.abs(resize_uint8(d, f.shape[:2]).astype(np.float64) - f.astype(np.float64)).mean() for f, d in zip(images, drawn)
  ]
  return float(np.mean(errors))


class Evaluator:
  def __init__(self, every: int = 0, num_images: int = 32, seed: int = 0):
    if num_images < 1:
      raise ValueError(f"reconstruction evaluator: num_images={num_images} must be >= 1")
    self.every, self.num_images, self.seed = every, num_images, seed

  def run(self, predict_fns, step):
    require_predict_fns(predict_fns, ("validation_images", "reconstruct_images"), "reconstruction")
    images = predict_fns["validation_images"](self.num_images)
    if not images:
      raise ValueError("reconstruction evaluator: the run's validation split has no frames")
    drawn = predict_fns["reconstruct_images"](images, self.seed)
    return {"frame_mae": frame_mae(images, drawn), "images": float(len(images))}
