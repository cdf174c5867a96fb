"""MGCC's contextual object grounding: the LLM lays out the objects of a multi-object prompt as
boxes in text, we parse them back, and the GLIGEN UNet draws each phrase in its box.

Text format (our design; the paper names none): `phrase (x0,y0,x1,y1)` per object, `; `
between objects, coordinates in percent of the image side (integers 0..100, top-left origin).
Integers keep the LLM's output short and parseable; percent is resolution-free. The LLM is
frozen (GILL), so it writes layouts from in-context examples (`layout_prompt`), the in-context
learning MGCC builds on.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

_BOX = re.compile(r"\s*([^;():\n]+?)\s*\(\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*\)")

EXAMPLE_SCENE = "a red circle at the top left and a blue square at the right on a plain grey background."
EXAMPLE_LAYOUT = "red circle (5,5,35,35); blue square (65,35,95,65)"


def format_boxes(objects: Sequence[tuple[str, Sequence[float]]]) -> str:
  """[(phrase, (x0, y0, x1, y1) in [0, 1])] -> 'phrase (x0,y0,x1,y1); ...' in integer percent."""
  parts = []
  for phrase, box in objects:
    x0, y0, x1, y1 = (int(round(100 * min(max(float(v), 0.0), 1.0))) for v in box)
    parts.append(f"{phrase.strip()} ({x0},{y0},{x1},{y1})")
  return "; ".join(parts)


def parse_boxes(text: str, max_boxes: int | None = None) -> list[tuple[str, tuple[float, float, float, float]]]:
  """The objects of a layout text, boxes back in [0, 1]; malformed entries and empty boxes are
  skipped (an LLM's output is not trusted), coordinates clipped to 100 and sorted per axis."""
  out = []
  for m in _BOX.finditer(text):
    phrase = m.group(1).strip(" ;,.")
    x0, y0, x1, y1 = (min(int(m.group(i)), 100) / 100 for i in range(2, 6))
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    if phrase and x1 > x0 and y1 > y0:
      out.append((phrase, (x0, y0, x1, y1)))
  return out[:max_boxes] if max_boxes else out


def layout_prompt(scene: str, examples: Sequence[tuple[str, str]] = ((EXAMPLE_SCENE, EXAMPLE_LAYOUT),)) -> str:
  """The in-context prompt whose continuation is the layout of `scene`."""
  head = "Lay out the objects of each scene as: name (x0,y0,x1,y1) in percent.\n"
  shots = "".join(f"Scene: {s}\nLayout: {layout}\n" for s, layout in examples)
  return f"{head}{shots}Scene: {scene}\nLayout:"


def box_inputs(objects, max_boxes: int, phrase_ids) -> dict[str, np.ndarray]:
  """Fixed-shape GLIGEN inputs: boxes [N, 4], masks [N], phrase token ids [N, L] (phrase_ids:
  the SD tokenizer, text -> [L] ids). Slots past the objects are masked (null features)."""
  length = len(phrase_ids(""))
  boxes = np.zeros((max_boxes, 4), np.float32)
  masks = np.zeros((max_boxes,), np.float32)
  ids = np.zeros((max_boxes, length), np.int32)
  for i, (phrase, box) in enumerate(objects[:max_boxes]):
    boxes[i], masks[i], ids[i] = box, 1.0, phrase_ids(phrase)
  return {"boxes": boxes, "masks": masks, "phrase_ids": ids}


def synthetic_objects(gt: dict, frame: int) -> list[tuple[str, tuple[float, float, float, float]]]:
  """The visible objects of a synthetic frame (data/synthetic.py ground truth) as (phrase, box in [0, 1])."""
  n = float(gt["size"][0])
  out = []
  for rec in gt["frames"][frame]["objects"]:
    if rec.get("visible"):
      meta = gt["objects"][rec["id"]]
      out.append((f"{rec['state']['colour']} {meta['shape']}", tuple(v / n for v in rec["box"])))
  return out
