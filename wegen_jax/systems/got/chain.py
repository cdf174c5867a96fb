"""GoT's reasoning chain as text and as an editable structure, its box canvases and its box IoU.

The chain is free text in which objects are written (SYSTEMS.md §2)
    [<|object_ref_start|>phrase<|object_ref_end|>]<|box_start|>(x1,y1),(x2,y2)<|box_end|> (colour)
with coordinates in [0, 1000). `parse_chain` splits it into text pieces and `ChainObject`s;
`Chain.text()` writes it back byte for byte, so a user (or a test) can move a box or swap an
object and feed the chain back (interactive editing: the diffusion stage reads the edited chain).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from PIL import ImageColor

from wegen_jax.data.synthetic import REGION_NAMES, region_name

REF_START, REF_END = "<|object_ref_start|>", "<|object_ref_end|>"
BOX_START, BOX_END = "<|box_start|>", "<|box_end|>"
COORD_RANGE = 1000
# the place words that end an object phrase of the synthetic captions (longest first: "top left" before "top")
_PLACE = re.compile(rf" at the (?:{'|'.join(sorted(REGION_NAMES, key=len, reverse=True))})$")

# The authors' pattern (parse_coordinates_colors) with the optional phrase before the box.
_OBJECT = re.compile(
  r"(?:<\|object_ref_start\|>(?P<phrase>.*?)<\|object_ref_end\|>)?"
  r"<\|box_start\|>\((?P<x1>\d+),(?P<y1>\d+)\),\((?P<x2>\d+),(?P<y2>\d+)\)<\|box_end\|> \((?P<colour>\w+)\)",
  re.DOTALL,
)


@dataclasses.dataclass
class ChainObject:
  """One grounded object: its phrase (None when the chain names none), box (x1, y1, x2, y2) in
  [0, 1000) and the colour its spatial canvas is filled with (a PIL colour name)."""

  phrase: str | None
  box: tuple[int, int, int, int]
  colour: str

  def text(self) -> str:
    x1, y1, x2, y2 = self.box
    ref = "" if self.phrase is None else f"{REF_START}{self.phrase}{REF_END}"
    return f"{ref}{BOX_START}({x1},{y1}),({x2},{y2}){BOX_END} ({self.colour})"

  def moved(self, dx: int, dy: int) -> "ChainObject":
    """The object with its box shifted (clipped to the image); a phrase that ends with the
    synthetic captions' place words ('... at the top left') names the new box's place."""
    x1, y1, x2, y2 = self.box
    clip = lambda v: int(min(max(v, 0), COORD_RANGE - 1))
    box = (clip(x1 + dx), clip(y1 + dy), clip(x2 + dx), clip(y2 + dy))
    phrase = self.phrase
    if phrase and _PLACE.search(phrase):
      place = region_name((box[0] + box[2]) / 2 / COORD_RANGE, (box[1] + box[3]) / 2 / COORD_RANGE)
      phrase = _PLACE.sub(f" at the {place}", phrase)
    return dataclasses.replace(self, box=box, phrase=phrase)


@dataclasses.dataclass
class Chain:
  """Text pieces interleaved with objects: pieces[0] obj[0] pieces[1] obj[1] ... pieces[n]."""

  pieces: list[str]
  objects: list[ChainObject]

  def text(self) -> str:
    out = [self.pieces[0]]
    for obj, piece in zip(self.objects, self.pieces[1:]):
      out += [obj.text(), piece]
    return "".join(out)

  def to_dict(self) -> dict:
    return {"pieces": list(self.pieces), "objects": [dataclasses.asdict(o) for o in self.objects]}

  @classmethod
  def from_dict(cls, d) -> "Chain":
    objects = [ChainObject(o.get("phrase"), tuple(int(v) for v in o["box"]), o["colour"]) for o in d["objects"]]
    if len(d["pieces"]) != len(objects) + 1:
      raise ValueError(
        f"a chain with {len(objects)} objects needs {len(objects) + 1} text pieces, got {len(d['pieces'])}"
      )
    return cls(list(d["pieces"]), objects)


def parse_chain(text: str) -> Chain:
  pieces, objects, last = [], [], 0
  for m in _OBJECT.finditer(text):
    pieces.append(text[last : m.start()])
    box = tuple(int(m.group(k)) for k in ("x1", "y1", "x2", "y2"))
    objects.append(ChainObject(m.group("phrase"), box, m.group("colour")))
    last = m.end()
  pieces.append(text[last:])
  return Chain(pieces, objects)


def colour_rgb(name: str) -> tuple[int, int, int]:
  """A PIL colour name as RGB (the authors fill boxes with PIL's ImageDraw); unknown -> white."""
  try:
    return ImageColor.getrgb(name)[:3]
  except ValueError:
    return (255, 255, 255)


def box_canvases(objects, height: int, width: int) -> np.ndarray:
  """Per object a black H x W canvas with its box filled in its colour, in [-1, 1]: float32
  [max(n, 1), 3, H, W] (one black canvas when there is no box), as GoT's spatial guidance draws
  them (PIL's rectangle includes both corners: x1*W/1000 .. x2*W/1000)."""
  canvases = np.full((max(len(objects), 1), 3, height, width), -1.0, np.float32)
  for i, obj in enumerate(objects):
    x1, y1, x2, y2 = obj.box
    c0, c1 = int(round(x1 / COORD_RANGE * width)), int(round(x2 / COORD_RANGE * width))
    r0, r1 = int(round(y1 / COORD_RANGE * height)), int(round(y2 / COORD_RANGE * height))
    rgb = np.asarray(colour_rgb(obj.colour), np.float32) / 127.5 - 1.0
    canvases[i, :, r0 : r1 + 1, c0 : c1 + 1] = rgb[:, None, None]
  return canvases


def pixel_box_to_chain(box, size: int) -> tuple[int, int, int, int]:
  """A pixel box [x0, y0, x1, y1) in a size x size image -> chain coordinates in [0, 1000)."""
  x0, y0, x1, y1 = box
  to = lambda v: int(min(max(round(v / size * COORD_RANGE), 0), COORD_RANGE - 1))
  return to(x0), to(y0), to(x1 - 1), to(y1 - 1)


def box_iou(a, b) -> float:
  """IoU of two boxes (x1, y1, x2, y2) with inclusive corners, in chain coordinates."""
  ix = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
  iy = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
  inter = ix * iy
  area = lambda r: max(0, r[2] - r[0] + 1) * max(0, r[3] - r[1] + 1)
  union = area(a) + area(b) - inter
  return inter / union if union else 0.0


def chain_box_iou(predicted: Chain, truth: Chain) -> dict[str, float]:
  """How well a chain's boxes match the ground truth's: each true object is matched to the
  unused predicted object of the same colour with the highest IoU (none: IoU 0). mean_iou averages over true objects (a missed object scores 0); recall@0.5 is the share
  matched with IoU >= 0.5; count_error = |#predicted - #true|."""
  free = list(range(len(predicted.objects)))
  ious = []
  for t in truth.objects:
    same = [i for i in free if predicted.objects[i].colour == t.colour]
    best = max(same, key=lambda i: box_iou(predicted.objects[i].box, t.box), default=None)
    if best is None:
      ious.append(0.0)
      continue
    ious.append(box_iou(predicted.objects[best].box, t.box))
    free.remove(best)
  n = max(len(ious), 1)
  return {
    "mean_iou": float(sum(ious) / n) if ious else float(not predicted.objects),
    "recall@0.5": float(sum(i >= 0.5 for i in ious) / n) if ious else float(not predicted.objects),
    "count_error": float(abs(len(predicted.objects) - len(truth.objects))),
  }


def objects_drawn(image: np.ndarray, truth: Chain, margin: float = 0.1, min_area: float = 0.003) -> list[bool]:
  """Per true object: whether uint8 `image` [H, W, 3] has a region of its colour (the synthetic
  scenes' colours, evaluators/geneval_synthetic.py) whose centroid lies in its box, widened by
  `margin` of the image on each side. The layout check of an image drawn from a chain."""
  from wegen_jax.data.synthetic import COLOURS
  from wegen_jax.evaluators.geneval_synthetic import colour_regions

  hits = []
  for obj in truth.objects:
    x1, y1, x2, y2 = (v / COORD_RANGE for v in obj.box)
    centroids = colour_regions(image, obj.colour, min_area) if obj.colour in COLOURS else []
    hits.append(any(x1 - margin <= x <= x2 + margin and y1 - margin <= y <= y2 + margin for x, y in centroids))
  return hits
