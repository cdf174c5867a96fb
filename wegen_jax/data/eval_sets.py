"""Readers for the papers' evaluation sets: COCO-2014 captions, VIST (SIS) stories, VisDial v1.0.

Each gives `EvalItem`s: the prompt for a system's `generate_images` and the ground-truth image.
Nothing is downloaded; a missing file names its path and where the dataset comes from.

  load_eval_set(dict(kind="coco_captions", annotations=".../captions_val2014.json",
                     images_dir=".../val2014", num=30000, seed=0))
"""

from __future__ import annotations

import collections
import dataclasses
import json
import random
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image

from wegen_jax.data import synthetic

SOURCES = {
  "coco_captions": "COCO 2014: https://cocodataset.org/#download (annotations_trainval2014.zip, val2014.zip)",
  "vist": "VIST SIS: https://visionandlanguage.net/VIST/json_files/story-in-sequence/SIS-with-labels.tar.gz "
  "(images: GILL's evals/download_vist_images.py saves them as <photo_flickr_id>.png)",
  "visdial": "VisDial v1.0: https://visualdialog.org/data (visdial_1.0_val.zip, VisualDialog_val2018.zip)",
}


IMAGE_MARK = "<image>"  # a context image's place in a prompt's text (GILL's generate.split_prompt)


@dataclasses.dataclass
class EvalItem:
  key: str  # the ground truth's id (COCO image id, VIST photo id, VisDial image id)
  text: str  # the whole text context, an IMAGE_MARK where each context image goes
  target: Path | None  # ground-truth image file
  images: list[Path] = dataclasses.field(default_factory=list)  # context image files, in order

  def prompt(self) -> dict:
    """generate_images' prompt: 'text' and the context 'images' (uint8, read now)."""
    return {"text": self.text, "images": [load_rgb(p) for p in self.images]}


def load_rgb(path: str | Path) -> np.ndarray:
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"))


def _json(path, kind: str):
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{kind} annotation file not found: {path}; get it from {SOURCES[kind]}")
  return json.loads(path.read_text())


def _images_dir(path, kind: str) -> Path:
  path = Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"{kind} image folder not found: {path}; get it from {SOURCES[kind]}")
  return path


def coco_captions(annotations, images_dir=None, num: int | None = None, seed: int = 0) -> list[EvalItem]:
  """One caption per image (drawn with `seed`) of `num` images drawn with `seed` from a COCO
  captions json (captions_val2014.json); target = images_dir/file_name when images_dir is given."""
  data = _json(annotations, "coco_captions")
  folder = _images_dir(images_dir, "coco_captions") if images_dir is not None else None
  captions = collections.defaultdict(list)
  for a in sorted(data["annotations"], key=lambda a: a["id"]):
    captions[a["image_id"]].append(a["caption"].strip())
  images = sorted((im for im in data["images"] if captions[im["id"]]), key=lambda im: im["id"])
  rng = random.Random(seed)
  if num is not None:
    if num > len(images):
      raise ValueError(f"{annotations} has {len(images)} captioned images; num={num} asks for more")
    images = rng.sample(images, num)
  return [
    EvalItem(str(im["id"]), rng.choice(captions[im["id"]]), folder / im["file_name"] if folder else None)
    for im in images
  ]


def _vist_image(folder: Path, photo_id: str) -> Path | None:
  for ext in (".png", ".jpg", ".jpeg"):
    if (folder / f"{photo_id}{ext}").is_file():
      return folder / f"{photo_id}{ext}"
  return None


def vist_stories(sis_json, images_dir, num: int | None = None) -> list[EvalItem]:
  """GILL's VIST protocol: captions c1..c5 with images i1..i4 (interleaved c1 i1 .. c4 i4 c5) ->
  generate i5. A story with a missing image is skipped, as GILL's scripts skip it."""
  data, folder = _json(sis_json, "vist"), _images_dir(images_dir, "vist")
  stories = collections.defaultdict(list)  # file order, as GILL's val_formatted.json
  for (a,) in data["annotations"]:
    stories[a["story_id"]].append((a["text"], a["photo_flickr_id"]))
  items = []
  for story in stories.values():
    paths = [_vist_image(folder, pid) for _, pid in story]
    if any(p is None for p in paths):
      continue
    text = IMAGE_MARK.join(t for t, _ in story)  # c1 <i1> c2 <i2> c3 <i3> c4 <i4> c5
    items.append(EvalItem(story[-1][1], text, paths[-1], paths[:-1]))
  return items[:num]


def visdial_dialogs(visdial_json, images_dir, num: int | None = None, split: str = "val") -> list[EvalItem]:
  """GILL's VisDial protocol: the dialog's rounds as 'Q: {question}?' / 'A: {answer}' lines
  (no caption) -> generate the image VisualDialog_<split>2018_<id:012d>.jpg (skipped when
  absent, as GILL's scripts skip it)."""
  data, folder = _json(visdial_json, "visdial")["data"], _images_dir(images_dir, "visdial")
  items = []
  for d in data["dialogs"]:
    key = str(d["image_id"]).rjust(12, "0")
    target = folder / f"VisualDialog_{split}2018_{key}.jpg"
    if not target.is_file():
      continue
    lines = []
    for r in d["dialog"]:
      lines += [f"Q: {data['questions'][r['question']]}?", f"A: {data['answers'][r['answer']]}"]
    items.append(EvalItem(key, "\n".join(lines), target))
  return items[:num]


READERS = {"coco_captions": coco_captions, "vist": vist_stories, "visdial": visdial_dialogs}


def load_eval_set(spec: Mapping) -> list[EvalItem]:
  """Items of the set `spec['kind']` (coco_captions, vist, visdial) read with the other fields."""
  spec = dict(spec)
  kind = spec.pop("kind", None)
  if kind not in READERS:
    raise ValueError(f"eval set kind={kind!r}; choose from {sorted(READERS)}")
  return READERS[kind](**spec)


GENEVAL_TASKS = ("colour", "two_object", "count", "position")
_TASK_OBJECTS = {"colour": (1, 1), "two_object": (2, 2), "count": (1, 3), "position": (2, 2)}


def synthetic_scenes(task: str, num: int, size: int = 64, seed: int = 0):
  """GenEval-style prompts drawn from the synthetic renderer (data/synthetic.py): static one-frame
  scenes of solid objects with distinct colours that do not touch, each as (prompt, frame,
  objects [(colour, shape, x, y)]). colour / two_object / count prompt the objects' names
  ('a red circle and a blue square.'), position the full caption with their regions."""
  lo, hi = _TASK_OBJECTS[task]
  spec = synthetic.ClipSpec(size=size, num_frames=1, static=True, min_objects=lo, max_objects=hi)
  out, s = [], 0
  while len(out) < num:
    s += 1
    frame, gt = synthetic.generate_clip(seed * 1_000_003 + GENEVAL_TASKS.index(task) * 100_003 + s, spec)
    objs = gt["scenes"][0]["objects"]
    boxes = [np.asarray(r["box"], float) for r in gt["frames"][0]["objects"] if r["visible"]]
    if len(boxes) != len(objs) or len({o["colour"] for o in objs}) != len(objs):
      continue
    if any(o["texture"] != "solid" for o in objs) or _touching(boxes, margin=2):
      continue
    if task == "position" and any(min(abs(v - 1 / 3), abs(v - 2 / 3)) < 0.05 for o in objs for v in (o["x"], o["y"])):
      continue  # a centre near a region border names an ambiguous place
    text = synthetic.caption(gt, 0)
    prompt = text if task == "position" else synthetic.short_prompt(text)
    out.append((prompt, frame[0], [(o["colour"], o["shape"], o["x"], o["y"]) for o in objs]))
  return out


def _touching(boxes, margin: float) -> bool:
  for i, a in enumerate(boxes):
    for b in boxes[i + 1 :]:
      if a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin:
        return True
  return False
