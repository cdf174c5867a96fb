"""Grain MapDataset over the curated TFDS dataset, decoding PNG frames in the map (minimal loader).

    ds = dynamics_dataset(DATA_DIR, "train", shard_index=jax.process_index(), shard_count=jax.process_count())
    ex = ds[0]  # {'video_id': str, 'frames': uint8 [K, H, W, 3], 'dynamics': [str] * (K - 1), ...}

The training pipeline (tokenising, interleaving, packing, batching) builds on this later.
"""

from __future__ import annotations

import grain
import tensorflow_datasets as tfds

from wegen_jax.data import schema


def tfds_source(data_dir: str, split: str, name: str = schema.DATASET_NAME):
  """Random-access source (tfds ArrayRecordDataSource) over the prepared array_record shards of dataset
  `name` (a tfds_builder.ArrayRecordBuilder's) under data_dir."""
  try:
    return tfds.data_source(name, data_dir=data_dir, split=split, download=False)
  except Exception as e:  # TFDS raises several types (not found, unknown split), with pages of text
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"cannot read split {split!r} of TFDS dataset {name!r} under {data_dir}: {first}") from e


def dynamics_dataset(
  data_dir: str,
  split: str = "train",
  *,
  shard_index: int = 0,
  shard_count: int = 1,
  num_frames: int | None = None,
  shuffle_seed: int | None = None,
  labelled_only: bool = False,
) -> grain.MapDataset:
  """Records of this process's shard (index::count), optionally only pairs (2) or triples (3).

  With a filter (num_frames, labelled_only), Grain keeps the length: ds[i] is None for a dropped record,
  and iteration (`iter(ds)`, `ds.to_iter_dataset()`) skips them.
  """
  ds = grain.MapDataset.source(tfds_source(data_dir, split))
  if shard_count > 1:
    ds = ds[shard_index::shard_count]
  if shuffle_seed is not None:
    ds = ds.shuffle(seed=shuffle_seed)
  ds = ds.map(schema.decode_record)
  if num_frames is not None:
    ds = ds.filter(lambda ex: len(ex["frame_indices"]) == num_frames)
  if labelled_only:
    ds = ds.filter(lambda ex: ex["labelled"])
  return ds
