"""GILL's training data: captioned images and multi-step stories -> fixed-shape batches.

A record is a list of steps (caption, image). The last image is the target: the sequence is
`c1 <i1> c2 <i2> ... cK [IMG0]..[IMG7]` (each <i> = 4 visual-token slots from CLIP pooled), as
GILL's VIST evaluation (captions and images in, the last image out); a captioned image is the
one-step story `c1 [IMG0..7]`. CE covers the captions and [IMG0] (GILL truncates its labels
after [IMG0]); a second, captioning row `<iK> cK` trains the visual tokens as GILL's captioning
mode does. Sources: `synthetic` (stories from the procedural dynamics world,
data/synthetic.py: frames spread over a clip with their ground-truth captions) or `captions`
(a JSONL file of {"image": path, "caption": text}).
"""

from __future__ import annotations

import json
from pathlib import Path

import grain
import numpy as np

from wegen_jax.data.image_preprocess import load_image, preprocess_image
from wegen_jax.data.loader import process_batches
from wegen_jax.training.losses import IGNORE_INDEX
from wegen_jax.systems.gill.tokenizer import GILLTokenizer, SDTokenizer


class SyntheticStories:
  """Story i: `steps` frames spread over synthetic clip (seed, i), with their captions."""

  def __init__(self, num: int, steps: int, seed: int, frame_size: int = 64):
    self.num, self.steps, self.seed, self.frame_size = num, steps, seed, frame_size

  def __len__(self):
    return self.num

  def __getitem__(self, i):
    from wegen_jax.data.synthetic import ClipSpec, caption, generate_clip

    spec = ClipSpec(size=self.frame_size, num_frames=12)
    frames, gt = generate_clip(self.seed * 1_000_003 + int(i), spec)
    ts = np.linspace(0, spec.num_frames - 1, self.steps).round().astype(int)
    return {"steps": [(caption(gt, int(t)), frames[t]) for t in ts], "record_id": int(i), "gt": gt, "frames_t": ts}


class CaptionFile:
  """Captioned images from a JSONL file ({"image": path relative to the file or absolute, "caption": text})."""

  def __init__(self, path: str):
    p = Path(path)
    if not p.is_file():
      raise FileNotFoundError(f"captions file not found: {p} (JSONL lines of {{'image': PATH, 'caption': TEXT}})")
    self.root = p.parent
    self.rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, i):
    row = self.rows[int(i)]
    image = np.asarray(load_image(self.root / row["image"]).convert("RGB"))
    return {"steps": [(row["caption"], image)], "record_id": int(i)}


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
    return SyntheticStories(n, int(d.steps), int(d.seed) + (split != "train"), int(d.get("frame_size", 64)))
  if d.source == "captions":
    return CaptionFile(d.captions if split == "train" else (d.get("validation_captions") or d.captions))
  raise ValueError(
    f"data.source={d.source!r}; choose 'synthetic' (stories) or 'captions' (a JSONL of captioned images)"
  )


def make_dataset(config, encoder: Encoder, split: str, *, seed: int, global_batch: int) -> grain.IterDataset:
  ds = grain.MapDataset.source(source(config, split))
  if split == "train":
    ds = ds.shuffle(seed=seed)
  return process_batches(ds.map(encoder), global_batch)
