"""FID of generated images against a reference set (clean-fid's 'clean' protocol).

  evals.fid = dict(type="fid", inception_weights=".../pt_inception-2015-12-05-6726825d.pth",
                   dataset=dict(kind="coco_captions", annotations=..., images_dir=..., num=30000),
                   image_size=256, guidance_scale=2.0)

Prompt i (the set's caption) is generated with seed + i (sharded over processes, resumable:
image_cache.generated_images); generated and reference images are centre-cropped square and
resized to `image_size` as uint8 (FID "at 256"), then go through clean-fid's preprocessing and
the FID Inception (pool3). The reference statistics are cached in `stats_dir` as an .npz keyed
by the set's items, the size and the extractor. Reports `fid` and `samples`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from scipy import linalg

from wegen_jax.data.eval_sets import load_eval_set, load_rgb
from wegen_jax.evaluators import require_predict_fns
from wegen_jax.evaluators.image_cache import generated_images
from wegen_jax.evaluators.image_features import InceptionFeatures, center_square, clean_resize

CHUNK = 500  # images decoded at a time


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  f = np.asarray(features, np.float64)
  return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2)) in float64 (pytorch-fid / clean-fid's formula,
  with their eps on the diagonal when the product is singular)."""
  mu1, mu2 = np.atleast_1d(np.float64(mu1)), np.atleast_1d(np.float64(mu2))
  s1, s2 = np.atleast_2d(np.float64(sigma1)), np.atleast_2d(np.float64(sigma2))
  covmean = linalg.sqrtm(s1 @ s2)
  if not np.isfinite(covmean).all():
    offset = np.eye(s1.shape[0]) * eps
    covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
  covmean = covmean.real  # imaginary parts are numerical noise
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def features_of(extract, indices, image_of, size: int) -> np.ndarray:
  """Features of the images at `indices`, centre-cropped square and resized to `size` as uint8."""
  return extract([clean_resize(center_square(image_of(i)), size, quantize=True) for i in indices])


def reference_stats(extract, items, size: int, stats_dir: Path, dataset: dict):
  """(mu, sigma) of the set's ground-truth images, from `stats_dir` when computed before."""
  keys = "\n".join(it.key for it in items)
  digest = hashlib.sha1(f"{keys}\n{size}".encode()).hexdigest()[:12]
  path = Path(stats_dir) / f"{dataset.get('kind', 'set')}-{len(items)}-{size}px-{digest}__{extract.name}.npz"
  if path.is_file():
    with np.load(path) as z:
      return z["mu"], z["sigma"]
  image_of = lambda i: load_rgb(items[i].target)
  chunks = [range(s, min(len(items), s + CHUNK)) for s in range(0, len(items), CHUNK)]
  mu, sigma = statistics(np.concatenate([features_of(extract, idx, image_of, size) for idx in chunks]))
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp.npz")
  np.savez(tmp, mu=mu, sigma=sigma, count=len(items))
  tmp.replace(path)
  return mu, sigma


class Evaluator:
  def __init__(self, every=0, dataset=None, inception_weights="", image_size=256, guidance_scale=None,
               stats_dir=None, seed=0, batch_size=None, feature_batch=50):  # fmt: skip
    if not dataset or not inception_weights:
      raise ValueError("fid evaluator needs dataset=dict(kind=..., ...) and inception_weights=<.pth path>")
    self.every, self.dataset, self.weights = every, dict(dataset), inception_weights
    self.size, self.guidance, self.seed, self.batch_size = image_size, guidance_scale, seed, batch_size
    self.stats_dir = Path(stats_dir or Path(inception_weights).parent / "fid_stats")
    self.feature_batch = feature_batch

  def run(self, predict_fns, step, out_dir=None):
    require_predict_fns(predict_fns, ("generate_images",), "fid")
    items = load_eval_set(self.dataset)
    if len(items) < 2:
      raise ValueError(f"fid evaluator: the set {self.dataset} has {len(items)} items; FID needs at least 2")
    extract = InceptionFeatures(self.weights, self.feature_batch)
    mu_ref, sigma_ref = reference_stats(extract, items, self.size, self.stats_dir, self.dataset)
    options = {} if self.guidance is None else {"guidance_scale": float(self.guidance)}
    prompts = [{"text": it.text, "options": options} for it in items]
    gen = predict_fns["generate_images"]
    with generated_images(gen, prompts, out_dir, seed=self.seed, batch_size=self.batch_size) as generated:
      tag = f"fid {extract.name} {self.size}"
      features = generated.scored(tag, lambda idx: features_of(extract, idx, generated, self.size), CHUNK)
    mu, sigma = statistics(features)
    return {"fid": frechet_distance(mu, sigma, mu_ref, sigma_ref), "samples": len(items)}
