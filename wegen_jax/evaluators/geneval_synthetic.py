"""GenEval-style compositional checks on the synthetic world, scored exactly (no detector).

  evals.geneval = dict(type="geneval_synthetic", num_per_task=32, image_size=64)

Prompts come from the renderer (data.eval_sets.synthetic_scenes); each generated image (resized
to image_size) is colour-segmented: an object of a named colour is a connected region of pixels
within COLOUR_TOLERANCE of it, at least `min_area` of the image. Tasks, as GenEval's:
  colour      the one named object's colour is there
  two_object  both named colours are there
  count       exactly as many object regions (of any object colour) as objects named, and each named colour
  position    each named object's centroid lies in the region the caption names (top left, centre, ...)
Reports each task's accuracy and `overall`, their mean (GenEval's overall).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from wegen_jax.data.eval_sets import GENEVAL_TASKS, synthetic_scenes
from wegen_jax.data.image_preprocess import resize_uint8
from wegen_jax.data.synthetic import COLOURS, region_name
from wegen_jax.evaluators import require_predict_fns
from wegen_jax.evaluators.dynamics import COLOUR_TOLERANCE
from wegen_jax.evaluators.image_cache import generated_images


def colour_regions(image: np.ndarray, colour: str, min_area: float) -> list[np.ndarray]:
  """Normalised (x, y) centroids of the connected regions near `colour` covering >= min_area."""
  near = np.linalg.norm(image.astype(np.float64) - np.asarray(COLOURS[colour], np.float64), axis=-1) < COLOUR_TOLERANCE
  labels, n = ndimage.label(near)
  h, w = near.shape
  out = []
  for k in range(1, n + 1):
    rows, cols = np.nonzero(labels == k)
    if rows.size >= min_area * h * w:
      out.append(np.array([(cols.mean() + 0.5) / w, (rows.mean() + 0.5) / h]))
  return out


def score(task: str, image: np.ndarray, objects, min_area: float) -> bool:
  """Whether the image satisfies the prompt of `objects` [(colour, shape, x, y)] for `task`."""
  found = {c: colour_regions(image, c, min_area) for c in COLOURS}
  named = all(found[c] for c, *_ in objects)
  if task in ("colour", "two_object"):
    return named
  if task == "count":
    return named and sum(len(v) for v in found.values()) == len(objects)
  if task == "position":  # some region of each colour in its named place
    return named and all(any(region_name(*p) == region_name(x, y) for p in found[c]) for c, _, x, y in objects)
  raise ValueError(f"unknown task {task!r}; choose from {GENEVAL_TASKS}")


class Evaluator:
  def __init__(
    self, every=0, num_per_task=32, image_size=64, min_area=0.003, seed=0, batch_size=None, tasks=GENEVAL_TASKS
  ):
    unknown = set(tasks) - set(GENEVAL_TASKS)
    if num_per_task < 1 or unknown:
      raise ValueError(f"geneval_synthetic: num_per_task={num_per_task} must be >= 1; tasks from {GENEVAL_TASKS}")
    self.every, self.num, self.size, self.min_area = every, num_per_task, image_size, min_area
    self.seed, self.batch_size, self.tasks = seed, batch_size, tuple(tasks)

  def items(self):
    return [(t, *s) for t in self.tasks for s in synthetic_scenes(t, self.num, self.size, self.seed)]

  def run(self, predict_fns, step, out_dir=None):
    require_predict_fns(predict_fns, ("generate_images",), "geneval_synthetic")
    items = self.items()
    prompts = [{"text": prompt} for _, prompt, _, _ in items]
    gen = predict_fns["generate_images"]
    hits = {t: [] for t in self.tasks}
    with generated_images(gen, prompts, out_dir, seed=self.seed, batch_size=self.batch_size) as generated:
      for i, (task, _, _, objects) in enumerate(items):
        image = resize_uint8(generated(i), (self.size, self.size))
        hits[task].append(score(task, image, objects, self.min_area))
    out = {t: float(np.mean(h)) for t, h in hits.items()}
    return {**out, "overall": float(np.mean(list(out.values()))), "samples": len(items)}
