"""Video reading and writing with PyAV (any container/codec the bundled FFmpeg handles).

`decode_sampled` is the one decoding path of the curation: it probes the file first (so an audio-only or
enormous file is rejected before any frame is decoded), samples frames at a target fps from presentation
timestamps, resizes + centre-crops them with swscale, and turns every FFmpeg failure into `VideoError` with a
short reason that the curation stats name per file.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator

import av
import numpy as np


class VideoError(Exception):
  """A video that cannot be used; str(err) is the reason recorded in the stats."""


@dataclasses.dataclass
class Probe:
  width: int
  height: int
  fps: float
  expected_frames: int  # from the container header, 0 when unknown
  codec: str


@dataclasses.dataclass
class Decoded:
  frames: np.ndarray  # uint8 [T, size, size, 3]
  source_index: np.ndarray  # int32 [T], index of each frame in the file's full frame sequence
  times: np.ndarray  # float32 [T], seconds
  probe: Probe
  crop: tuple[float, float, float, float]  # kept source window (x0, y0, x1, y1), normalised


def write_video(
  path: str,
  frames: np.ndarray,
  fps: int,
  codec: str = "libx264",
  pix_fmt: str = "yuv420p",
  options: dict[str, str] | None = None,
) -> None:
  """Writes uint8 frames [T, H, W, 3] (H, W even for 4:2:0 formats)."""
  opts = {
    "libx264": {"crf": "18", "preset": "veryfast"},
    "libvpx-vp9": {"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"},
  }.get(codec, {})
  opts.update(options or {})
  with av.open(path, mode="w") as out:
    stream = out.add_stream(codec, rate=fps, options=opts)
    stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
    stream.pix_fmt = pix_fmt
    if codec in ("mpeg4", "mjpeg"):
      stream.codec_context.qscale = 2  # near-lossless so ground-truth masks stay exact enough
    for img in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)


def probe(path: str, max_pixels: int) -> Probe:
  if not os.path.exists(path):
    raise VideoError("missing file or broken link")
  if not os.path.isfile(path):  # a FIFO or device would block or stream forever
    raise VideoError("not a regular file")
  if os.path.getsize(path) == 0:
    raise VideoError("zero-length file")
  try:
    with av.open(path) as container:
      return _probe_container(container, max_pixels)
  except VideoError:
    raise
  except (av.FFmpegError, OSError, ValueError) as e:
    raise VideoError(f"unreadable: {type(e).__name__}: {e}") from e


def _probe_container(container, max_pixels: int) -> Probe:
  if not container.streams.video:
    kinds = sorted({s.type for s in container.streams}) or ["none"]
    raise VideoError(f"no video stream (streams: {', '.join(kinds)})")
  s = container.streams.video[0]
  w, h = s.codec_context.width, s.codec_context.height
  if not w or not h:
    raise VideoError("video stream without a frame size")
  if w * h > max_pixels:
    raise VideoError(f"resolution {w}x{h} exceeds max_pixels={max_pixels}")
  fps = float(s.average_rate or s.guessed_rate or 0) or 25.0
  expected = int(s.frames or 0)
  if not expected and s.duration and s.time_base:
    expected = int(round(float(s.duration * s.time_base) * fps))
  if not expected and container.duration:
    expected = int(round(container.duration / 1e6 * fps))
  return Probe(int(w), int(h), fps, expected, s.codec_context.name)


def _crop_window(w: int, h: int) -> tuple[int, int, int, int]:
  """Centre square crop in source pixels."""
  side = min(w, h)
  x0, y0 = (w - side) // 2, (h - side) // 2
  return x0, y0, x0 + side, y0 + side


def iter_sampled(
  path: str,
  *,
  fps: float,
  size: int,
  max_pixels: int,
  chunk_frames: int = 256,
  max_frames: int = 1_000_000,
  min_decoded_fraction: float = 0.9,
) -> Iterator[Decoded]:
  """Decodes frames at about `fps` (every frame if fps <= 0), each resized to a size x size centre crop,
  and yields them in chunks of at most chunk_frames, so memory does not grow with the video's length.

  Raises VideoError (from the first or a later next()) for unusable files, on any decode error, and at the
  end for a file that stops long before its header says (truncated).
  """
  info = probe(path, max_pixels)
  x0, y0, x1, y1 = _crop_window(info.width, info.height)
  crop = (x0 / info.width, y0 / info.height, x1 / info.width, y1 / info.height)
  # resize the whole frame so the centre square becomes size x size, then slice the square out (swscale)
  scale = size / (x1 - x0)
  rw, rh = max(size, round(info.width * scale)), max(size, round(info.height * scale))
  ox, oy = (rw - size) // 2, (rh - size) // 2
  frames, idx, times = [], [], []
  last_bin, n, kept = -1, -1, 0

  def chunk() -> Decoded:
    out = Decoded(np.stack(frames), np.asarray(idx, np.int32), np.asarray(times, np.float32), info, crop)
    frames.clear(), idx.clear(), times.clear()
    return out

  try:
    with av.open(path) as container:
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      for n, frame in enumerate(container.decode(stream)):
        t = float(frame.time) if frame.time is not None else n / info.fps
        if fps > 0:  # keep the first frame of every 1/fps time bin
          b = int(np.floor(t * fps + 1e-6))
          if b <= last_bin:
            continue
          last_bin = b
        img = frame.to_ndarray(format="rgb24", width=rw, height=rh)
        frames.append(img[oy : oy + size, ox : ox + size])
        idx.append(n)
        times.append(t)
        kept += 1
        if len(frames) >= chunk_frames:
          yield chunk()
        if kept >= max_frames:
          break
  except (av.FFmpegError, OSError, ValueError, MemoryError) as e:
    raise VideoError(f"decode error after {n + 1} frames: {type(e).__name__}: {e}") from e
  decoded = n + 1
  if decoded == 0:
    raise VideoError("no decodable video frames")
  if kept < max_frames and info.expected_frames and decoded < min_decoded_fraction * info.expected_frames:
    raise VideoError(f"truncated: decoded {decoded} of {info.expected_frames} frames in the header")
  if frames:
    yield chunk()


def decode_sampled(path: str, **kwargs) -> Decoded:
  """All sampled frames at once (iter_sampled's arguments); for short clips and tests."""
  parts = list(iter_sampled(path, **kwargs))
  return Decoded(
    np.concatenate([p.frames for p in parts]),
    np.concatenate([p.source_index for p in parts]),
    np.concatenate([p.times for p in parts]),
    parts[0].probe,
    parts[0].crop,
  )
