"""Dynamics metrics on the generator's exact ground truth."""

import numpy as np

from wegen_jax.data import synthetic as S
from wegen_jax.evaluators.dynamics import evaluate, frame_metrics


def pair_with_motion():
  for seed in range(40):
    frames, gt = S.generate_clip(seed, S.ClipSpec(num_frames=24))
    text = S.describe(gt, 0, 20)
    if "moves" in text and "colour" not in text and gt["frames"][0]["scene"] == gt["frames"][20]["scene"]:
      return frames, gt
  raise AssertionError("no moving clip in 40 seeds")


def boxes_of(gt, frames_idx):
  """Normalised boxes, frame index and 'colour shape' label of the visible objects."""
  boxes, frame_of, labels = [], [], []
  for k, t in enumerate(frames_idx):
    for obj in gt["frames"][t]["objects"]:
      if obj["visible"]:
        h, w = np.broadcast_to(np.asarray(gt["size"]), (2,))
        boxes.append(np.asarray(obj["box"], np.float32) / np.array([w, h, w, h], np.float32))
        frame_of.append(k)
        labels.append(f"{obj['state']['colour']} {gt['objects'][obj['id']]['shape']}")
  return np.asarray(boxes, np.float32), np.asarray(frame_of), labels


def test_target_scores_perfectly_and_source_copy_pays_for_motion():
  frames, gt = pair_with_motion()
  a, b = frames[0], frames[20]
  boxes, frame_of, labels = boxes_of(gt, (0, 20))
  perfect = frame_metrics(b, a, b, boxes, frame_of, labels)
  assert perfect["frame_mae"] == 0 and perfect["unchanged_mae"] == 0
  assert perfect["position_error"] < 0.03  # colour centroid ~ box centre
  assert perfect["object_found"] == 1.0
  result = evaluate([dict(generated=b, source=a, target=b, boxes=boxes, box_frame=frame_of, box_label=labels)])
  assert result["baseline_position_error"] > result["position_error"] + 0.02
  assert result["baseline_unchanged_mae"] < 8  # unmentioned background stays (codec-free frames)
  blank = frame_metrics(np.zeros_like(b), a, b, boxes, frame_of, labels)
  assert blank["position_error"] >= 0.5 and blank["unchanged_mae"] > 10 and blank["object_found"] == 0.0
