"""TFDS array_record datasets written from Python records (no TensorFlow needed), and the dynamics dataset.

`ArrayRecordBuilder` is the one writer: a subclass names the dataset (its class name), its VERSION and
features (`_info`); `write_dataset` hands it a function split -> (key, example) records and
`GeneratorBasedBuilder.download_and_prepare` with file_format='array_record' serialises them with the
TFDS example serializer into `DATA_DIR/<name>/<version>/{dataset_info,features}.json` plus
`<name>-<split>.array_record-NNNNN-of-MMMMM`. This works with tensorflow-datasets 4.9.10 without
TensorFlow installed as long as every feature is a Tensor/Text/bytes feature (see schema.py). Readers use
`tfds.data_source(name, data_dir=DATA_DIR)` (source.tfds_source).

`WegenDynamics` merges the per-video curation results; its splits are assigned per video (hash of the
video id), so frames of one video never land in both splits.
"""

from __future__ import annotations

import os
import shutil
import zlib
from typing import Any, Callable, Iterable, Iterator

import tensorflow_datasets as tfds
from etils import epath

from wegen_jax.data import schema

Examples = Callable[[str], Iterable[tuple[str, dict[str, Any]]]]


def split_of(key: str, validation_fraction: float) -> str:
  """'validation' for a stable hash-chosen fraction of keys, else 'train'."""
  u = zlib.crc32(key.encode()) / 2**32
  return "validation" if u < validation_fraction else "train"


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of the datasets written here (abstract: TFDS registers only the subclasses, which define `_info`)."""

  # TFDS would locate the builder's file through importlib_resources (not installed without TensorFlow's
  # extras); giving a path directly skips that lookup.
  code_path = epath.Path(__file__)

  def __init__(self, *, examples: Examples | None = None, splits: tuple[str, ...] = ("train", "validation"), **kwargs):
    # `examples` is None when TFDS instantiates the class only to read prepared files.
    self._examples = examples
    self._splits = splits
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    if self._examples is None:
      raise RuntimeError(f"{type(self).__name__} needs `examples` to build; use tfds_builder.write_dataset")
    return {s: self._generate_examples(s) for s in self._splits}

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield from self._examples(split)


def write_dataset(
  builder_cls: type[ArrayRecordBuilder], data_dir: str, examples: Examples, splits: Iterable[str], download_dir: str
) -> dict[str, int]:
  """(Re)writes builder_cls's dataset under data_dir from scratch; returns the number of records per split.

  splits: the non-empty splits (TFDS cannot write an empty one); with none, no dataset is written.
  """
  splits = tuple(sorted(set(splits), key=lambda s: (s != "train", s != "validation", s)))
  builder = builder_cls(examples=examples, splits=splits, data_dir=data_dir, file_format="array_record")
  if os.path.isdir(builder.data_dir):  # a rebuild (new records, new labels) replaces the old version
    shutil.rmtree(builder.data_dir)
  if not splits:
    return {}
  tfds.disable_progress_bar()  # the callers report their own progress
  builder.download_and_prepare(download_dir=download_dir)
  return {name: int(s.num_examples) for name, s in builder.info.splits.items()}


class WegenDynamics(ArrayRecordBuilder):
  """Curated frame pairs/triples with dynamics texts. Build it with `build_dataset`."""

  VERSION = tfds.core.Version(schema.VERSION)
  RELEASE_NOTES = {schema.VERSION: "Pairs and triples from DIIC curation (wegen_jax.curation)."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="WeGen DIIC video-dynamics pairs/triples; see wegen_jax/data/schema.py.",
      features=schema.features(),
      homepage="https://github.com/hzphzp/WeGen",
    )


def build_dataset(
  data_dir: str,
  results: Callable[[], Iterable[dict[str, Any]]],
  video_ids: Iterable[str],
  validation_fraction: float,
  download_dir: str,
) -> dict[str, int]:
  """The dynamics dataset from curation results; returns the number of records per split.

  video_ids: the videos that have records; a split none of them falls in is left out.
  """

  def examples(split):
    for res in results():
      if split_of(res["video_id"], validation_fraction) == split:
        for i, rec in enumerate(res["records"]):
          yield f"{res['video_id']}#{i}", rec

  splits = {split_of(v, validation_fraction) for v in video_ids}
  return write_dataset(WegenDynamics, data_dir, examples, splits, download_dir)


def dataset_dir(data_dir: str) -> str:
  return os.path.join(data_dir, schema.DATASET_NAME, schema.VERSION)
