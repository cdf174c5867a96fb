"""Record schema of the curated video-dynamics (DIIC) data, shared by curation, training and evaluation.

One record is a pair (K = 2) or a multi-step triple (K = 3) of frames from one shot of one video,
`<A> d1 <B> d2 <C>`:

  video_id       Text            stable id of the source video (relative path without extension)
  frame_indices  int32 [K]       index of each frame in the source video's full frame sequence
  frames         Sequence(bytes) [K] PNG-encoded RGB frames (TFDS Image needs TensorFlow; bytes do not)
  caption        Text            caption of the first frame ('' until labelled)
  dynamics       Sequence(Text)  [K-1] what changes from frame k to k+1 ('' until labelled)
  boxes          float32 [N, 4]  optional object boxes (x0, y0, x1, y1) normalised to the record frame
  box_frame      int32 [N]       which of the K frames each box belongs to
  box_label      Sequence(Text)  [N] object name of each box ("red circle")
  labelled       bool            False for records written by the selection pass without a labeller
  labeller       Text            which labeller filled the texts ('' when unlabelled)

The TFDS features need no TensorFlow with file_format='array_record' (see tfds_builder.py).
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
import pyspng
from PIL import Image

VERSION = "1.0.0"
DATASET_NAME = "wegen_dynamics"


def features():
  import tensorflow_datasets as tfds  # heavy import, only where a TFDS object is needed

  F = tfds.features
  return F.FeaturesDict(
    {
      "video_id": F.Text(),
      "frame_indices": F.Tensor(shape=(None,), dtype=np.int32),
      "frames": F.Sequence(F.Tensor(shape=(), dtype=np.object_)),
      "caption": F.Text(),
      "dynamics": F.Sequence(F.Text()),
      "boxes": F.Tensor(shape=(None, 4), dtype=np.float32),
      "box_frame": F.Tensor(shape=(None,), dtype=np.int32),
      "box_label": F.Sequence(F.Text()),
      "labelled": F.Scalar(dtype=np.bool_),
      "labeller": F.Text(),
    }
  )


def encode_png(img: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.asarray(img, np.uint8)).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
  """uint8 [H, W, 3]. libspng first (half PIL's time on curated frames: decoding is most of a
  training row's host time, docs/PERFORMANCE.md); PIL for any other PNG (grey, alpha, 16-bit,
  palette) and for bytes libspng rejects, so a bad frame raises PIL's error as before."""
  try:
    img = pyspng.load(data)
  except Exception:  # PIL decides (and reports) what is wrong with the bytes
    img = None
  if img is not None and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3:
    return img
  return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def make_record(video_id: str, frame_indices: Sequence[int], frames: Sequence[np.ndarray | bytes]) -> dict[str, Any]:
  """An unlabelled record (frames as uint8 HWC arrays or PNG bytes); a labeller later fills
  caption/dynamics/boxes via `with_labels`."""
  k = len(frame_indices)
  if k < 2 or len(frames) != k:
    raise ValueError(f"need >= 2 frames with one index each, got {k} indices and {len(frames)} frames")
  return {
    "video_id": video_id,
    "frame_indices": np.asarray(frame_indices, np.int32),
    "frames": [f if isinstance(f, bytes) else encode_png(f) for f in frames],
    "caption": "",
    "dynamics": [""] * (k - 1),
    "boxes": np.zeros((0, 4), np.float32),
    "box_frame": np.zeros((0,), np.int32),
    "box_label": [],
    "labelled": False,
    "labeller": "",
  }


def with_labels(
  record: dict[str, Any],
  labeller: str,
  caption: str,
  dynamics: Sequence[str],
  boxes: Sequence[tuple[int, str, Sequence[float]]] = (),
) -> dict[str, Any]:
  """Returns a copy with the texts set; boxes are (frame position, label, (x0, y0, x1, y1))."""
  k = len(record["frame_indices"])
  if len(dynamics) != k - 1:
    raise ValueError(f"a {k}-frame record needs {k - 1} dynamics texts, got {len(dynamics)}")
  out = dict(record, caption=caption, dynamics=list(dynamics), labelled=True, labeller=labeller)
  out["boxes"] = np.asarray([b[2] for b in boxes], np.float32).reshape(-1, 4)
  out["box_frame"] = np.asarray([b[0] for b in boxes], np.int32)
  out["box_label"] = [b[1] for b in boxes]
  return out


def decode_record(ex: dict[str, Any]) -> dict[str, Any]:
  """TFDS numpy example -> arrays and str: frames uint8 [K, H, W, 3]."""
  txt = lambda v: v.decode() if isinstance(v, bytes) else str(v)
  return {
    "video_id": txt(ex["video_id"]),
    "frame_indices": np.asarray(ex["frame_indices"], np.int32),
    "frames": np.stack([decode_png(b) for b in ex["frames"]]),
    "caption": txt(ex["caption"]),
    "dynamics": [txt(d) for d in ex["dynamics"]],
    "boxes": np.asarray(ex["boxes"], np.float32).reshape(-1, 4),
    "box_frame": np.asarray(ex["box_frame"], np.int32),
    "box_label": [txt(b) for b in ex["box_label"]],
    "labelled": bool(ex["labelled"]),
    "labeller": txt(ex["labeller"]),
  }
