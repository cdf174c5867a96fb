"""Captioned images (CC3M-style) as a TFDS array_record dataset, and GILL's reader of it.

  python -m wegen_jax.systems.gill.tfds_captions --captions FILE.jsonl --out DATA_DIR [--validation_fraction 0.05]
  python -m wegen_jax.train --config configs/gill.py:size=6.7b --config.data.source=tfds --config.data.dir=DATA_DIR

Input: a JSONL of {"image": PATH (relative to the file or absolute), "caption": TEXT}, or a folder of
images each with a same-named .txt caption (CC3M as img2dataset writes it). Each readable image is
stored as its original encoded bytes (TFDS's Image feature needs TensorFlow; bytes do not) with its
caption, written by data/tfds_builder.py's one array_record writer into DATA_DIR/gill_captions/1.0.0/.
An image that is missing or does not decode is skipped with a one-line warning and counted (as the
curation pipeline does); splits are chosen per image by a hash of its path (tfds_builder.split_of).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds

from wegen_jax.data import tfds_builder
from wegen_jax.data.image_preprocess import load_image
from wegen_jax.data.source import tfds_source
from wegen_jax.systems.gill.data import caption_rows

DATASET_NAME = "gill_captions"
DATASET_VERSION = "1.0.0"
log = logging.getLogger(__name__)


class GillCaptions(tfds_builder.ArrayRecordBuilder):
  """Captioned images: image (encoded bytes), caption (text), key (the image's path as given)."""

  VERSION = tfds.core.Version(DATASET_VERSION)
  RELEASE_NOTES = {DATASET_VERSION: "Captioned images for GILL / MGCC (wegen_jax.systems.gill.tfds_captions)."}

  def _info(self) -> tfds.core.DatasetInfo:
    F = tfds.features
    return tfds.core.DatasetInfo(
      builder=self,
      description="Captioned images (CC3M-style) for GILL / MGCC; images as their encoded bytes.",
      features=F.FeaturesDict({"image": F.Tensor(shape=(), dtype=np.object_), "caption": F.Text(), "key": F.Text()}),
    )


def _readable(image: Path, caption: str | None) -> bytes:
  """The image's encoded bytes, after checking that it decodes (PIL, fully) and has a caption."""
  if caption is None:
    raise ValueError(f"no caption file {image.with_suffix('.txt').name}")
  data = image.read_bytes()
  load_image(data)  # convert('RGB') decodes every pixel: a truncated file fails here
  return data


def build(captions: str, out: str, validation_fraction: float = 0.05) -> dict:
  """Writes DATASET_NAME under `out`; returns {'splits': {split: n}, 'skipped': [(path, reason)], 'dataset_dir'}."""
  rows = caption_rows(captions)
  split_of = [tfds_builder.split_of(str(image), validation_fraction) for image, _ in rows]
  skipped: list[tuple[str, str]] = []

  def examples(split):
    for i, (image, caption) in enumerate(rows):
      if split_of[i] != split:
        continue
      try:
        data = _readable(image, caption)
      except Exception as e:  # missing, unreadable or corrupt: skip and count, as the curation does
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        log.warning("skipping %s: %s", image, reason)
        skipped.append((str(image), reason))
        continue
      yield f"{i:09d}", {"image": data, "caption": caption, "key": str(image)}  # a row's number: unique

  with tempfile.TemporaryDirectory() as downloads:
    splits = tfds_builder.write_dataset(GillCaptions, out, examples, set(split_of), downloads)
  return {"splits": splits, "skipped": skipped, "dataset_dir": os.path.join(out, DATASET_NAME, DATASET_VERSION)}


class TFDSCaptions:
  """GILL's source over a built dataset: record i is the one-step story (caption, image)."""

  def __init__(self, data_dir: str, split: str):
    self.source = tfds_source(data_dir, split, DATASET_NAME)

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    ex = self.source[int(i)]
    caption = ex["caption"].decode() if isinstance(ex["caption"], bytes) else str(ex["caption"])
    return {"steps": [(caption, np.asarray(load_image(ex["image"])))], "record_id": int(i)}


def main(argv: Sequence[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--captions", required=True, help="JSONL of {'image': PATH, 'caption': TEXT}, or a folder")
  ap.add_argument("--out", required=True, help="TFDS data dir (the dataset goes to OUT/gill_captions/1.0.0)")
  ap.add_argument("--validation_fraction", type=float, default=0.05)
  args = ap.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(message)s")
  stats = build(args.captions, args.out, args.validation_fraction)
  print(
    f"dataset: {stats['dataset_dir']}  records: {stats['splits']}  skipped (missing/corrupt): {len(stats['skipped'])}"
  )


if __name__ == "__main__":
  main()
