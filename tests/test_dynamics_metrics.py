"""Dynamics metrics on the generator's exact ground truth."""

import numpy as np

from wegen_jax.data import synthetic as S
from wegen_jax.evaluators.dynamics import evaluate, frame_metrics, moved_colours


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


def test_moved_objects_are_measured_from_where_they_are_in_the_target():
  for seed in range(40):
    frames, gt = S.generate_clip(seed, S.ClipSpec(num_frames=24, event_kinds=("move",)))
    boxes, frame_of, labels = boxes_of(gt, (0, 20))
    if gt["frames"][0]["scene"] == gt["frames"][20]["scene"] and (moved := moved_colours(boxes, frame_of, labels)):
      break
  a, b, text = frames[0], frames[20], S.describe(gt, 0, 20)
  assert all(f"the {c} " in text and " moves " in text for c in moved)  # the instruction names them
  perfect = frame_metrics(b, a, b, boxes, frame_of, labels)
  assert perfect["moved_position_error"] == 0 and perfect["moved_object_found"] == 1.0
  assert perfect["moved_objects"] == len(moved)
  copied = frame_metrics(a, a, b, boxes, frame_of, labels)
  assert copied["moved_position_error"] > 0.05 and copied["moved_object_found"] == 1.0
  blank = frame_metrics(np.zeros_like(b), a, b, boxes, frame_of, labels)
  assert blank["moved_position_error"] == 0.5 and blank["moved_object_found"] == 0.0
  pooled = evaluate([dict(generated=b, source=a, target=b, boxes=boxes, box_frame=frame_of, box_label=labels)] * 2)
  assert pooled["moved_objects"] == 2 * len(moved) and pooled["baseline_moved_position_error"] > 0.05


def test_objects_sharing_a_colour_are_not_located_by_it():
  boxes = np.array([[0.1, 0.1, 0.2, 0.2], [0.6, 0.6, 0.7, 0.7], [0.5, 0.1, 0.6, 0.2]] * 2, np.float32)
  boxes[3:5] += 0.2  # both red objects move
  frame_of = np.array([0, 0, 0, 1, 1, 1])
  labels = ["red circle", "red square", "blue ring"] * 2
  assert moved_colours(boxes, frame_of, labels) == []
  labels = ["red circle", "green square", "blue ring"] * 2
  assert sorted(moved_colours(boxes, frame_of, labels)) == ["green", "red"]
