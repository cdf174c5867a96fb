"""Curation of one video: decode -> shots -> features -> selection -> unlabelled records (no labelling here)."""
from __future__ import annotations

import time
import zlib
from typing import Any

import numpy as np

from wegen_jax.data import schema, video_io
from wegen_jax.data.curate import filters, select, shots

TIMED_STAGES = ("decode", "shots", "features", "select", "encode_png")


def video_rng(seed: int, video_id: str) -> np.random.Generator:
    """Per-video stream: results do not depend on worker count, order or host sharding."""
    return np.random.default_rng([seed, zlib.crc32(video_id.encode())])


def failed(video_id: str, path: str, reason: str, times: dict[str, float] | None = None) -> dict[str, Any]:
    return {"video_id": video_id, "path": path, "status": "failed", "reason": reason, "records": [],
            "shots": [], "funnel": {}, "times": times or {}}


def process_video(path: str, video_id: str, cfg, encoder) -> dict[str, Any]:
    times = {s: 0.0 for s in TIMED_STAGES}
    t0 = time.perf_counter()
    try:
        dec = video_io.decode_sampled(path, fps=cfg.sample_fps, size=cfg.frame_size, max_pixels=cfg.max_pixels,
                                      max_frames=cfg.max_frames_per_video,
                                      min_decoded_fraction=cfg.min_decoded_fraction)
    except video_io.VideoError as e:
        return failed(video_id, path, str(e), dict(times, decode=time.perf_counter() - t0))
    times["decode"] = time.perf_counter() - t0
    result = {"video_id": video_id, "path": path, "status": "ok", "reason": "", "num_sampled": len(dec.frames),
              "probe": vars(dec.probe), "crop": list(dec.crop), "times": times}
    if len(dec.frames) < cfg.min_frames:
        result.update(status="failed", reason=f"too short: {len(dec.frames)} sampled frames < {cfg.min_frames}",
                      records=[], shots=[], funnel={})
        return result

    t = time.perf_counter()
    small = filters.downsample(dec.frames, cfg.analysis_size)
    g = filters.grey(small)
    shot_list, _ = shots.detect_shots(small, g, cfg.shots)
    times["shots"] = time.perf_counter() - t
    t = time.perf_counter()
    feats = encoder(dec.frames if getattr(encoder, "full_resolution", False) else small)
    times["features"] = time.perf_counter() - t
    t = time.perf_counter()
    kept, funnel = select.select(g, feats, shot_list, min(dec.probe.width, dec.probe.height), cfg.select,
                                 video_rng(cfg.seed, video_id))
    times["select"] = time.perf_counter() - t
    t = time.perf_counter()
    png = {t: schema.encode_png(dec.frames[t]) for t in sorted({t for c in kept for t in c})}  # once per frame
    records = [schema.make_record(video_id, dec.source_index[list(c)].tolist(), [png[t] for t in c]) for c in kept]
    times["encode_png"] = time.perf_counter() - t
    src = dec.source_index
    last = int(src[-1]) + 1
    result.update(records=records, funnel=funnel,
                  shots=[[int(src[s]), int(src[e]) if e < len(src) else last] for s, e in shot_list])
    return result
