"""Metrics for dynamics-conditioned generation, from the synthetic ground truth.

Given source frame A, target frame B (with object boxes) and a generated frame G:
  unchanged_mae  mean |G - B| over pixels outside every object box of A and B: did the
                 image keep what the instruction did not mention?
  position_error distance (in image widths) between each object's box centre in B and its
                 centroid in G, located by the object's colour ("red circle" -> red)
  object_found   share of B's objects whose colour appears in G at all
  frame_mae      mean |G - B| over the whole frame
  moved_position_error, moved_object_found
                 the same for the objects the instruction moves (box centres >= MOVE_THRESHOLD
                 apart in A and B), measured from where their colour lies in B, not from B's box
                 centre: B itself scores 0. Only objects whose colour is their own in the scene and
                 visible in B count (a fading or hidden object cannot be located by colour); the
                 box-centre figures above charge even B ~0.1 for those (issue 19's demo data).
Each is also computed for the copy-the-source baseline (G = A), the bar a model must beat
on position while matching it on the unchanged region.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from wegen_jax.data.image_preprocess import resize_uint8
from wegen_jax.data.synthetic import COLOURS
from wegen_jax.evaluators import require_predict_fns
from wegen_jax.evaluators.image_cache import generated_images

COLOUR_TOLERANCE = 60.0  # RGB distance accepted as "this object's colour"
MISSING_PENALTY = 0.5  # position error charged when the object's colour is absent
MOVE_THRESHOLD = 0.06  # from here on synthetic.describe names a move ("moves left to the ...")


def boxes_mask(boxes: np.ndarray, size: tuple[int, int], margin: float = 0.02) -> np.ndarray:
  """bool [H, W], True inside any normalised box (x0, y0, x1, y1) grown by `margin`."""
  h, w = size
  mask = np.zeros((h, w), bool)
  for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
    c0, c1 = int(np.floor((x0 - margin) * w)), int(np.ceil((x1 + margin) * w))
    r0, r1 = int(np.floor((y0 - margin) * h)), int(np.ceil((y1 + margin) * h))
    mask[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = True
  return mask


def colour_centroid(image: np.ndarray, colour: str) -> np.ndarray | None:
  """Normalised (x, y) centroid of the pixels near `colour`, or None when there are none."""
  distance = np.linalg.norm(image.astype(np.float64) - np.asarray(COLOURS[colour], np.float64), axis=-1)
  rows, cols = np.nonzero(distance < COLOUR_TOLERANCE)
  if rows.size == 0:
    return None
  h, w = distance.shape
  return np.array([(cols.mean() + 0.5) / w, (rows.mean() + 0.5) / h])


def _centre(box) -> np.ndarray:
  return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def moved_colours(boxes: np.ndarray, box_frame: np.ndarray, box_label: Sequence[str]) -> list[str]:
  """Colours of the objects that move by >= MOVE_THRESHOLD from A to B (the same label in both),
  leaving out colours that more than one object of A and B wears (located by colour, they mix)."""
  boxes, box_frame = np.asarray(boxes).reshape(-1, 4), np.asarray(box_frame)
  where = {(int(f), label): box for box, f, label in zip(boxes, box_frame, box_label)}
  wearers: dict[str, set[str]] = {}
  for label in box_label:
    wearers.setdefault(label.split()[0], set()).add(label.split(" ", 1)[-1])
  out = []
  for (f, label), box in where.items():
    colour = label.split()[0]
    if f != 1 or (0, label) not in where or colour not in COLOURS or len(wearers[colour]) > 1:
      continue
    if np.linalg.norm(_centre(box) - _centre(where[(0, label)])) >= MOVE_THRESHOLD:
      out.append(colour)
  return out


def frame_metrics(
  generated: np.ndarray,
  source: np.ndarray,
  target: np.ndarray,
  boxes: np.ndarray,
  box_frame: np.ndarray,
  box_label: Sequence[str],
) -> dict[str, float]:
  """Metrics of one generated frame (uint8 [H, W, 3], same size as the target)."""
  size = target.shape[:2]
  box_frame = np.asarray(box_frame)
  changed = boxes_mask(boxes[box_frame <= 1], size)
  keep = ~changed
  g, b = generated.astype(np.float64), target.astype(np.float64)
  errors, found_count = [], 0
  for box, frame, label in zip(np.asarray(boxes).reshape(-1, 4), box_frame, box_label):
    colour = label.split()[0]
    if frame != 1 or colour not in COLOURS:
      continue
    centre = _centre(box)
    found = colour_centroid(generated, colour)
    errors.append(MISSING_PENALTY if found is None else float(np.linalg.norm(found - centre)))
    found_count += found is not None
  moved_errors, moved_found = [], 0
  for colour in moved_colours(boxes, box_frame, box_label):
    there = colour_centroid(target, colour)
    if there is None:
      continue
    found = colour_centroid(generated, colour)
    moved_errors.append(MISSING_PENALTY if found is None else float(np.linalg.norm(found - there)))
    moved_found += found is not None
  return {
    "unchanged_mae": float(np.abs(g - b)[keep].mean()) if keep.any() else 0.0,
    "frame_mae": float(np.abs(g - b).mean()),
    "position_error": float(np.mean(errors)) if errors else 0.0,
    "object_found": found_count / len(errors) if errors else 1.0,
    # per frame; `evaluate` pools them over the moved objects of all frames
    "moved_position_error": float(np.mean(moved_errors)) if moved_errors else 0.0,
    "moved_object_found": moved_found / len(moved_errors) if moved_errors else 1.0,
    "moved_objects": len(moved_errors),
  }


def evaluate(samples: Sequence[Mapping]) -> dict[str, float]:
  """Mean metrics of generated frames and of the copy-the-source baseline over samples with
  keys generated, source, target, boxes, box_frame, box_label."""
  ours, base = [], []
  for s in samples:
    meta = (s["boxes"], s["box_frame"], s["box_label"])
    ours.append(frame_metrics(s["generated"], s["source"], s["target"], *meta))
    base.append(frame_metrics(s["source"], s["source"], s["target"], *meta))
  out = {}
  moved = np.array([m["moved_objects"] for m in ours], np.float64)
  for name in ours[0] if ours else ():
    if name == "moved_objects":
      continue
    weights = moved if name.startswith("moved_") else None  # per object, not per frame
    if weights is not None and not weights.sum():
      continue
    out[name] = float(np.average([m[name] for m in ours], weights=weights))
    out[f"baseline_{name}"] = float(np.average([m[name] for m in base], weights=weights))
  out["samples"] = len(ours)
  out["moved_objects"] = int(moved.sum())
  return out


class Evaluator:
  """Dynamics consistency on held-out pairs (config.evals, type "dynamics"):

    evals.dynamics = dict(type="dynamics", every=0, num_samples=32)

  Needs predict functions `validation_pairs(num)` (dicts with text, source, target, boxes,
  box_frame, box_label) and `generate_images(prompts, rng_seed)`; prompt i is the pair's text
  with its source frame, asked in chunks of batch_size (default: the local device count).
  Reports `evaluate`'s metrics, the copy baseline's beside them."""

  def __init__(self, every: int = 0, num_samples: int = 32, seed: int = 0, batch_size: int | None = None):
    if num_samples < 1:
      raise ValueError(f"dynamics evaluator: num_samples={num_samples} must be >= 1")
    self.every, self.num_samples, self.seed, self.batch_size = every, num_samples, seed, batch_size

  def run(self, predict_fns, step, out_dir=None):
    """out_dir (RUN/eval/<step>/<name> when run by the trainer or the eval CLI): the generated
    frames as NNN.png; those already there are reused."""
    require_predict_fns(predict_fns, ("validation_pairs", "generate_images"), "dynamics")
    pairs = predict_fns["validation_pairs"](self.num_samples)
    if not pairs:
      raise ValueError("dynamics evaluator: the run's validation split has no labelled pairs")
    prompts = [{"text": p["text"], "images": [p["source"]]} for p in pairs]
    gen = predict_fns["generate_images"]
    with generated_images(gen, prompts, out_dir, seed=self.seed, batch_size=self.batch_size) as generated:
      frames = [generated(i) for i in range(len(pairs))]
    return evaluate([dict(p, generated=resize_uint8(g, p["target"].shape[:2])) for p, g in zip(pairs, frames)])
