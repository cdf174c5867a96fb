"""Curation of one video: decode -> shots -> features -> selection -> unlabelled records (no labelling here)."""

from __future__ import annotations

import time
import zlib
from typing import Any

import numpy as np

from wegen_jax.data import schema, video_io
from wegen_jax.curation import filters, select, shots

TIMED_STAGES = ("decode", "shots", "features", "select", "encode_png")


def video_rng(seed: int, video_id: str) -> np.random.Generator:
  """Per-video stream: results do not depend on worker count, order or host sharding."""
  return np.random.default_rng([seed, zlib.crc32(video_id.encode())])


def failed(video_id: str, path: str, reason: str, times: dict[str, float] | None = None) -> dict[str, Any]:
  return {
    "video_id": video_id,
    "path": path,
    "status": "failed",
    "reason": reason,
    "records": [],
    "shots": [],
    "funnel": {},
    "times": times or {},
  }


def process_video(path: str, video_id: str, cfg, encoder) -> dict[str, Any]:
  """Decodes in chunks of cfg.chunk_frames sampled frames (bounded memory for long videos); shots carry over
  chunk borders (the last frame of a chunk is compared with the first of the next), tuples do not span them."""
  times = {s: 0.0 for s in TIMED_STAGES}
  rng = video_rng(cfg.seed, video_id)
  records, shot_starts, funnel = [], [], {}
  prev, num_sampled, last_src, info = None, 0, 0, None
  t0 = time.perf_counter()
  try:
    for dec in video_io.iter_sampled(
      path,
      fps=cfg.sample_fps,
      size=cfg.frame_size,
      max_pixels=cfg.max_pixels,
      chunk_frames=cfg.chunk_frames,
      max_frames=cfg.max_frames_per_video,
      min_decoded_fraction=cfg.min_decoded_fraction,
    ):
      times["decode"] += time.perf_counter() - t0
      info = dec
      num_sampled += len(dec.frames)
      last_src = int(dec.source_index[-1]) + 1
      recs, starts, prev = _chunk(dec, video_id, prev, cfg, encoder, rng, funnel, times)
      records += recs
      shot_starts += starts
      t0 = time.perf_counter()
    times["decode"] += time.perf_counter() - t0
  except video_io.VideoError as e:
    return failed(video_id, path, str(e), dict(times, decode=times["decode"] + time.perf_counter() - t0))
  if num_sampled < cfg.min_frames:
    return failed(video_id, path, f"too short: {num_sampled} sampled frames < {cfg.min_frames}", times)
  return {
    "video_id": video_id,
    "path": path,
    "status": "ok",
    "reason": "",
    "num_sampled": num_sampled,
    "probe": vars(info.probe),
    "crop": list(info.crop),
    "times": times,
    "records": records,
    "funnel": funnel,
    "shots": [[a, b] for a, b in zip(shot_starts, shot_starts[1:] + [last_src])],
  }


def _chunk(dec, video_id, prev, cfg, encoder, rng, funnel, times):
  """Curates one chunk; returns its records, the source indices of the shots it starts, and its last frame."""
  t = time.perf_counter()
  small = filters.downsample(dec.frames, cfg.analysis_size)
  g = filters.grey(small)
  if prev is None:
    chunk_shots, _ = shots.detect_shots(small, g, cfg.shots)
    new_shots = chunk_shots
  else:  # prepend the previous chunk's last frame so a cut right at the border is seen
    both, _ = shots.detect_shots(np.concatenate([prev[0], small]), np.concatenate([prev[1], g]), cfg.shots)
    chunk_shots = [(max(s - 1, 0), e - 1) for s, e in both if e > 1]
    new_shots = chunk_shots[1:] if both[0][1] > 1 else chunk_shots  # first shot continues across the border
  times["shots"] += time.perf_counter() - t
  t = time.perf_counter()
  feats = encoder(dec.frames if getattr(encoder, "full_resolution", False) else small)
  times["features"] += time.perf_counter() - t
  t = time.perf_counter()
  kept, counts = select.select(g, feats, chunk_shots, min(dec.probe.width, dec.probe.height), cfg.select, rng)
  for k, c in counts.items():
    funnel[k] = {s: funnel.get(k, {}).get(s, 0) + v for s, v in c.items()}
  times["select"] += time.perf_counter() - t
  t = time.perf_counter()
  png = {i: schema.encode_png(dec.frames[i]) for i in sorted({i for c in kept for i in c})}  # once per frame
  src = dec.source_index
  recs = [schema.make_record(video_id, src[list(c)].tolist(), [png[i] for i in c]) for c in kept]
  times["encode_png"] += time.perf_counter() - t
  return recs, [int(src[s]) for s, _ in new_shots], (small[-1:], g[-1:])
