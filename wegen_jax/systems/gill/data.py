"""GILL's training data: captioned images and multi-step stories -> fixed-shape batches.

A record is a list of steps (caption, image). The last image is the target: the sequence is
`c1 <i1> c2 <i2> ... cK [IMG0]..[IMG7]` (each <i> = 4 visual-token slots from CLIP pooled), as
GILL's VIST evaluation (captions and images in, the last image out); a captioned image is the
one-step story `c1 [IMG0..7]`. CE covers the captions and [IMG0] (GILL truncates its labels
after [IMG0]); a second, captioning row `<iK> cK` trains the visual tokens as GILL's captioning
mode does. Sources: `synthetic` (stories from the procedural dynamics world,
data/synthetic.py: frames spread over a clip with their ground-truth captions), `captions`
(a JSONL file of {"image": path, "caption": text}) or `tfds` (those built into a TFDS
array_record dataset by tfds_captions.py: data.dir, data.split, data.validation_split).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import grain
import numpy as np

from wegen_jax.data.image_preprocess import load_image, preprocess_image
from wegen_jax.data.loader import process_batches
from wegen_jax.training.losses import IGNORE_INDEX
from wegen_jax.systems.gill.tokenizer import GILLTokenizer, SDTokenizer


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SOURCES = ("synthetic", "captions", "tfds")


class SyntheticStories:
  """Story i: `steps` frames spread over synthetic clip (seed, i), with their captions, or with
  text="dynamics" the first frame's caption and then what changed since the previous frame
  (WeGen's `<A> d1 <B> d2 <C>`; "nothing changes." where nothing did). A `static_fraction` of
  the clips (chosen by hash) have no events."""

  def __init__(self, num, steps, seed, frame_size=64, static_fraction=0.0, text="captions"):
    if text not in ("captions", "dynamics"):
      raise ValueError(f"data.story_text={text!r}; choose 'captions' or 'dynamics'")
    self.num, self.steps, self.seed, self.frame_size = num, steps, seed, frame_size
    self.static_fraction, self.text = static_fraction, text

  def __len__(self):
    return self.num

  def __getitem__(self, i):
    from wegen_jax.data.synthetic import ClipSpec, caption, describe, generate_clip

    clip_seed = self.seed * 1_000_003 + int(i)
    static = bool(np.random.default_rng([clip_seed, 7]).random() < self.static_fraction)
    spec = ClipSpec(size=self.frame_size, num_frames=12, static=static)
    frames, gt = generate_clip(clip_seed, spec)
    ts = np.linspace(0, spec.num_frames - 1, self.steps).round().astype(int)
    texts = [caption(gt, int(t)) for t in ts]
    if self.text == "dynamics":
      texts[1:] = [describe(gt, int(a), int(b)) for a, b in zip(ts, ts[1:])]
    return {"steps": list(zip(texts, frames[ts])), "record_id": int(i), "gt": gt, "frames_t": ts}


# Labels of the decision head (index 0 retrieve, 1 generate: model.GILL.decide). GILL's decision
# model learns when a retrieved image serves better than a generated one; here that is when a
# near-duplicate of the target is already retrievable: one of the story's own earlier images,
# the candidates a dialogue can hand back ("show it again" after a scene in which nothing
# changed). The test is on pixels (mean absolute difference at most NEAR_DUPLICATE of 255), so
# a dynamic clip whose objects stopped moving is a retrieval example too; a new image is generated.
RETRIEVE, GENERATE = 0, 1
NEAR_DUPLICATE = 2.0


def decision_label(steps) -> int:
  target = np.asarray(steps[-1][1], np.float32)
  for _, image in steps[:-1]:
    image = np.asarray(image, np.float32)
    if image.shape == target.shape and np.abs(image - target).mean() <= NEAR_DUPLICATE:
      return RETRIEVE
  return GENERATE


def caption_rows(path: str | os.PathLike) -> list[tuple[Path, str]]:
  """(image path, caption) pairs from a JSONL file or a folder of images with .txt captions."""
  p = Path(path)
  if p.is_dir():
    images = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    return [(f, f.with_suffix(".txt").read_text().strip() if f.with_suffix(".txt").is_file() else None) for f in images]
  if not p.is_file():
    raise FileNotFoundError(f"captions not found: {p} (a JSONL of {{'image': PATH, 'caption': TEXT}} or a folder)")
  rows = []
  for n, line in enumerate(p.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      rows.append((p.parent / row["image"], str(row["caption"])))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise ValueError(f"{p}:{n}: not a {{'image': PATH, 'caption': TEXT}} JSON line ({type(e).__name__}: {e})") from e
  return rows


class CaptionFile:
  """Captioned images from a JSONL file ({"image": path relative to the file or absolute, "caption": text})."""

  def __init__(self, path: str):
    if not Path(path).is_file():
      raise FileNotFoundError(f"captions file not found: {path} (JSONL lines of {{'image': PATH, 'caption': TEXT}})")
    self.rows = caption_rows(path)

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, i):
    image, caption = self.rows[int(i)]
    return {"steps": [(caption, np.asarray(load_image(image)))], "record_id": int(i)}


class Encoder:
  """Steps -> the fixed-shape example (see module doc); shapes from config.data."""

  def __init__(self, data_cfg, model_cfg, tokenizer: GILLTokenizer, sd_tokenizer: SDTokenizer):
    self.d, self.tok, self.sd_tok = data_cfg, tokenizer, sd_tokenizer
    self.nv, self.n_img = model_cfg.num_visual_tokens, model_cfg.num_img_tokens
    self.size = model_cfg.vision.vision.image_size

  def pixels(self, image) -> np.ndarray:
    return preprocess_image(image, self.size, resample="bicubic")

  def __call__(self, record) -> dict:
    d, tok = self.d, self.tok
    steps = record["steps"]
    max_len, max_images = int(d.max_len), int(d.max_images)
    if len(steps) - 1 > max_images:
      raise ValueError(f"a record has {len(steps) - 1} context images; data.max_images is {max_images}")
    ids, supervised = [tok.bos_id], [False]
    positions = np.zeros((max_images, self.nv), np.int32)
    valid = np.zeros((max_images,), bool)
    context = np.zeros((max_images, 3, self.size, self.size), np.float32)
    cap_len = int(d.caption_len)
    for k, (text, image) in enumerate(steps):
      t = tok.encode(text)[: cap_len - self.nv]  # each caption as long as the captioning row holds
      ids += t
      supervised += [True] * len(t)
      if k < len(steps) - 1:
        positions[k] = np.arange(len(ids), len(ids) + self.nv)
        valid[k], context[k] = True, self.pixels(image)
        ids += [tok.pad_id] * self.nv
        supervised += [False] * self.nv
    img_start = len(ids)
    ids += list(tok.img_ids)
    supervised += [True] + [False] * (self.n_img - 1)  # CE on [IMG0] only
    if len(ids) > max_len:
      raise ValueError(f"a record needs {len(ids)} tokens; data.max_len is {max_len}")
    caption, target = steps[-1]
    cap = ([tok.pad_id] * self.nv + tok.encode(caption))[:cap_len]
    return {
      **_with_labels("", ids, supervised, max_len, tok.pad_id),
      "image_positions": positions,
      "image_valid": valid,
      "context_pixels": context,
      "img_start": np.int32(img_start),
      "target_pixels": self.pixels(target),
      "sd_ids": self.sd_tok(caption),
      **_with_labels("cap_", cap, [False] * self.nv + [True] * (len(cap) - self.nv), cap_len, tok.pad_id),
      "decision_label": np.int32(decision_label(steps)),
      "record_id": np.int32(record["record_id"]),
    }


def _with_labels(prefix, ids, supervised, length, pad):
  """input_ids, segment_ids and next-token labels (label[t] = ids[t+1] where supervised)."""
  n = len(ids)
  out_ids = np.full((length,), pad, np.int32)
  out_ids[:n] = ids
  seg = np.zeros((length,), np.int32)
  seg[:n] = 1
  labels = np.full((length,), IGNORE_INDEX, np.int32)
  sup = np.asarray(supervised + [False], bool)
  labels[: n - 1] = np.where(sup[1:n], out_ids[1:n], IGNORE_INDEX)
  return {f"{prefix}input_ids": out_ids, f"{prefix}segment_ids": seg, f"{prefix}labels": labels}


def source(config, split: str):
  d = config.data
  if d.source == "synthetic":
    n = int(d.num_records) if split == "train" else int(d.get("num_validation", 16))
    seed = int(d.seed) + (split != "train")
    frame_size, static = int(d.get("frame_size", 64)), float(d.get("static_fraction", 0.0))
    return SyntheticStories(n, int(d.steps), seed, frame_size, static, d.get("story_text", "captions"))
  if d.source == "captions":
    return CaptionFile(d.captions if split == "train" else (d.get("validation_captions") or d.captions))
  if d.source == "tfds":
    from wegen_jax.systems.gill.tfds_captions import TFDSCaptions

    return TFDSCaptions(d.dir, d.split if split == "train" else d.validation_split)
  raise ValueError(f"data.source={d.source!r}; choose {' or '.join(map(repr, SOURCES))}")


def make_dataset(config, encoder: Encoder, split: str, *, seed: int, global_batch: int) -> grain.IterDataset:
  ds = grain.MapDataset.source(source(config, split))
  if split == "train":
    ds = ds.shuffle(seed=seed)
  return process_batches(ds.map(encoder), global_batch)
