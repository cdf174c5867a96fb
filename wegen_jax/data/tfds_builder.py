"""TFDS builder that merges the per-video curation results into array_record shards (no TensorFlow needed).

`GeneratorBasedBuilder.download_and_prepare` with file_format='array_record' serialises the examples with the
TFDS example serializer and writes `DATA_DIR/wegen_dynamics/1.0.0/{dataset_info,features}.json` plus
`wegen_dynamics-{train,validation}.array_record-NNNNN-of-MMMMM`; this works with tensorflow-datasets 4.9.10
without TensorFlow installed because every feature is a Tensor/Text/bytes feature (see schema.py). Readers use
`tfds.data_source('wegen_dynamics', data_dir=DATA_DIR)` or `tfds.builder_from_directory(...)` (source.py).

Splits are assigned per video (hash of the video id), so frames of one video never land in both splits.
"""

from __future__ import annotations

import os
import shutil
import zlib
from typing import Any, Callable, Iterable, Iterator

import tensorflow_datasets as tfds
from etils import epath

from wegen_jax.data import schema


def split_of(video_id: str, validation_fraction: float) -> str:
  u = zlib.crc32(video_id.encode()) / 2**32
  return "validation" if u < validation_fraction else "train"


class WegenDynamics(tfds.core.GeneratorBasedBuilder):
  """Curated frame pairs/triples with dynamics texts. Build it with `build_dataset`."""

  VERSION = tfds.core.Version(schema.VERSION)
  RELEASE_NOTES = {schema.VERSION: "Pairs and triples from DIIC curation (wegen_jax.curation)."}
  # TFDS would locate this file through importlib_resources (not installed without TensorFlow's extras);
  # giving the path directly skips that lookup.
  code_path = epath.Path(__file__)

  def __init__(
    self,
    *,
    results: Callable[[], Iterable[dict[str, Any]]] | None = None,
    validation_fraction: float = 0.1,
    splits: tuple[str, ...] = ("train", "validation"),
    **kwargs,
  ):
    # `results` is None when TFDS instantiates the class only to read prepared files.
    self._results = results
    self._splits = splits
    self._validation_fraction = validation_fraction
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="WeGen DIIC video-dynamics pairs/triples; see wegen_jax/data/schema.py.",
      features=schema.features(),
      homepage="https://github.com/hzphzp/WeGen",
    )

  def _split_generators(self, dl_manager):
    if self._results is None:
      raise RuntimeError("WegenDynamics needs `results` to build; use wegen_jax.data.tfds_builder.build_dataset")
    return {s: self._generate_examples(s) for s in self._splits}

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for res in self._results():
      if split_of(res["video_id"], self._validation_fraction) != split:
        continue
      for i, rec in enumerate(res["records"]):
        yield f"{res['video_id']}#{i}", rec


def build_dataset(
  data_dir: str,
  results: Callable[[], Iterable[dict[str, Any]]],
  video_ids: Iterable[str],
  validation_fraction: float,
  download_dir: str,
) -> dict[str, int]:
  """(Re)writes the dataset from scratch; returns the number of records per split.

  video_ids: the videos that have records; a split none of them falls in is left out (TFDS cannot write an
  empty split), and with no records at all no dataset is written.
  """
  splits = tuple(sorted({split_of(v, validation_fraction) for v in video_ids}, key=["train", "validation"].index))
  builder = WegenDynamics(
    results=results,
    validation_fraction=validation_fraction,
    splits=splits,
    data_dir=data_dir,
    file_format="array_record",
  )
  if os.path.isdir(builder.data_dir):  # a re-merge (new videos, new labels) replaces the old version
    shutil.rmtree(builder.data_dir)
  if not splits:
    return {}
  tfds.disable_progress_bar()  # the curation has its own progress bar
  builder.download_and_prepare(download_dir=download_dir)
  return {name: int(s.num_examples) for name, s in builder.info.splits.items()}


def dataset_dir(data_dir: str) -> str:
  return os.path.join(data_dir, schema.DATASET_NAME, schema.VERSION)
