"""Runs the curation over a folder of videos: sharded, process-parallel, resumable, then merged into TFDS.

Layout of DATA_DIR:
  _work/results/<video key>.pkl    one result per video (records or the failure reason), written atomically by
                                   the worker that processed it: a killed run loses only its in-flight videos,
                                   and a re-run skips every video that has a result made with the same config
  wegen_dynamics/1.0.0/...         the TFDS array_record dataset, rebuilt from all results by `merge`
  curation_stats.json              videos seen/kept/failed (each failed file named with its reason), shots,
                                   the per-filter funnel, records per split, labelled counts, time per stage
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import json
import multiprocessing as mp
import os
import pickle
import re
import sys
import time
from typing import Any, Iterator

import numpy as np

from wegen_jax.data import schema

WORK = "_work"
STATS = "curation_stats.json"
# Config parts that do not change which records are selected (resume keeps results across them).
NOT_SELECTION = ("labeller", "workers", "progress", "validation_fraction")


# ------------------------------------------------------------------------------------------------ files


def discover(videos_dir: str, ignore_extensions) -> list[str]:
  """All regular files under videos_dir except sidecars/notes, as sorted relative paths. Files that are not
  videos are kept on purpose: they must show up in the stats as failed with a reason."""
  out = []
  for root, dirs, files in os.walk(videos_dir):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for f in files:
      if not f.startswith(".") and os.path.splitext(f)[1].lower() not in ignore_extensions:
        out.append(os.path.relpath(os.path.join(root, f), videos_dir))
  return sorted(out)


def result_path(data_dir: str, video_id: str) -> str:
  safe = re.sub(r"[^A-Za-z0-9._-]+", "_", video_id)[-80:]
  h = hashlib.sha1(video_id.encode()).hexdigest()[:10]
  return os.path.join(data_dir, WORK, "results", f"{safe}.{h}.pkl")


def write_atomic(path: str, obj: Any) -> None:
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "wb") as f:
    pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
  os.replace(tmp, path)


def read_result(path: str) -> dict[str, Any] | None:
  try:
    with open(path, "rb") as f:
      return pickle.load(f)
  except (OSError, EOFError, pickle.UnpicklingError):
    return None


def iter_results(data_dir: str) -> Iterator[dict[str, Any]]:
  d = os.path.join(data_dir, WORK, "results")
  for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
    if name.endswith(".pkl"):
      res = read_result(os.path.join(d, name))
      if res is not None:
        yield res


def config_hash(cfg) -> str:
  d = {k: v for k, v in cfg.to_dict().items() if k not in NOT_SELECTION}
  return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- workers

_STATE: dict[str, Any] = {}


def _init_worker(cfg) -> None:
  from wegen_jax.curation import encoders

  _STATE["cfg"], _STATE["encoder"] = cfg, encoders.build_encoder(cfg.encoder)


def _work(path: str, video_id: str, out_path: str, chash: str) -> dict[str, Any]:
  """Processes one video in a worker and writes its result; returns a small summary."""
  from wegen_jax.curation import pipeline

  try:
    res = pipeline.process_video(path, video_id, _STATE["cfg"], _STATE["encoder"])
  except Exception as e:  # noqa: BLE001  any bug or odd file must not stop the run
    res = pipeline.failed(video_id, path, f"error: {type(e).__name__}: {e}")
  res["config_hash"] = chash
  write_atomic(out_path, res)
  return {"status": res["status"], "reason": res["reason"], "records": len(res["records"])}


def _progress(total: int, enabled: bool):
  from tqdm import tqdm

  return tqdm(total=total, desc="curate", unit="video", disable=not enabled, file=sys.stderr)


def run_selection(
  videos_dir: str, data_dir: str, cfg, host_index: int = 0, host_count: int = 1, progress: bool = True
) -> dict[str, int]:
  """Selection pass over this host's share of the videos; returns counts of what this run did."""
  videos_dir = os.path.abspath(videos_dir)
  os.makedirs(os.path.join(data_dir, WORK, "results"), exist_ok=True)
  files = discover(videos_dir, set(cfg.ignore_extensions))[host_index::host_count]
  chash = config_hash(cfg)
  todo = []
  for rel in files:
    out = result_path(data_dir, rel)
    prev = read_result(out) if os.path.exists(out) else None
    if prev is None or prev.get("config_hash") != chash:
      todo.append((os.path.join(videos_dir, rel), rel, out, chash))
  counts = collections.Counter(assigned=len(files), skipped_done=len(files) - len(todo))
  bar = _progress(len(todo), progress)
  if cfg.workers <= 1:
    _init_worker(cfg)
    for job in todo:
      counts[_work(*job)["status"]] += 1
      bar.update()
  else:
    _run_pool(todo, cfg, counts, bar)
  bar.close()
  return dict(counts)


def _run_pool(todo, cfg, counts, bar) -> None:
  """Process pool (spawn: safe with FFmpeg threads). If a worker dies (a decoder crash), the videos it left
  unfinished are rerun one at a time in a single worker, so a crash names its own file and nothing else."""
  ctx = mp.get_context("spawn")
  make = lambda n: cf.ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker, initargs=(cfg,))
  suspects = []
  with make(cfg.workers) as ex:
    futs = {ex.submit(_work, *job): job for job in todo}
    for fut in cf.as_completed(futs):
      try:
        counts[fut.result()["status"]] += 1
        bar.update()
      except cf.process.BrokenProcessPool:
        suspects.append(futs[fut])
  ex = None
  for job in sorted(suspects):
    ex = ex or make(1)
    try:
      counts[ex.submit(_work, *job).result()["status"]] += 1
    except cf.process.BrokenProcessPool:
      ex.shutdown()
      ex = None
      from wegen_jax.curation import pipeline

      res = pipeline.failed(job[1], job[0], "worker process crashed while processing this file")
      write_atomic(job[2], dict(res, config_hash=job[3]))
      counts["failed"] += 1
    bar.update()
  if ex is not None:
    ex.shutdown()


# -------------------------------------------------------------------------------------------- labelling


def run_labelling(data_dir: str, cfg, host_index: int = 0, host_count: int = 1, progress: bool = True) -> dict:
  """Fills caption/dynamics of every unlabelled record of this host's results, one video file at a time."""
  from wegen_jax.curation import labellers

  labeller = labellers.build_labeller(cfg.labeller)
  d = os.path.join(data_dir, WORK, "results")
  names = sorted(n for n in os.listdir(d) if n.endswith(".pkl"))[host_index::host_count] if os.path.isdir(d) else []
  counts = collections.Counter()
  for name in _progress_iter(names, progress, "label"):
    path = os.path.join(d, name)
    res = read_result(path)
    if res is None or not any(not r["labelled"] for r in res["records"]):
      continue
    errors, new = [], []
    for rec in res["records"]:
      if rec["labelled"]:
        new.append(rec)
        continue
      frames = (
        np.stack([schema.decode_png(b) for b in rec["frames"]]) if labeller.needs_frames else np.zeros((0,), np.uint8)
      )
      req = labellers.LabelRequest(res["path"], res["video_id"], rec["frame_indices"].tolist(), frames, res["crop"])
      try:
        lab = labeller(req)
        new.append(schema.with_labels(rec, labeller.name, lab.caption, lab.dynamics, lab.boxes))
        counts["labelled"] += 1
      except labellers.LabelError as e:
        new.append(rec)
        errors.append(str(e))
        counts["label_failed"] += 1
    res["records"], res["label_errors"] = new, errors
    write_atomic(path, res)
  return dict(counts)


def _progress_iter(items, enabled, desc):
  from tqdm import tqdm

  return tqdm(items, desc=desc, unit="video", disable=not enabled, file=sys.stderr)


# ---------------------------------------------------------------------------------------------- merging


def collect_stats(data_dir: str) -> dict[str, Any]:
  videos = collections.Counter()
  failed, label_errors = [], []
  funnel: dict[str, collections.Counter] = {}
  times = collections.Counter()
  recs = collections.Counter()
  for res in iter_results(data_dir):
    videos["seen"] += 1
    for k, v in res.get("times", {}).items():
      times[k] += v
    if res["status"] != "ok":
      videos["failed"] += 1
      failed.append({"file": res["video_id"], "reason": res["reason"]})
      continue
    videos["kept" if res["records"] else "no_pairs"] += 1
    videos["shots"] += len(res["shots"])
    videos["sampled_frames"] += res.get("num_sampled", 0)
    for k, f in res["funnel"].items():
      funnel.setdefault(k, collections.Counter()).update(f)
    for r in res["records"]:
      recs[f"k{len(r['frame_indices'])}"] += 1
      recs["labelled" if r["labelled"] else "unlabelled"] += 1
    label_errors += [{"file": res["video_id"], "reason": e} for e in res.get("label_errors", [])]
  total = sum(times.values()) or 1.0
  return {
    "videos": {
      "seen": videos["seen"],
      "kept": videos["kept"],
      "no_pairs": videos["no_pairs"],
      "failed": videos["failed"],
      "failed_files": failed,
    },
    "shots": videos["shots"],
    "sampled_frames": videos["sampled_frames"],
    "funnel": {k: dict(v) for k, v in funnel.items()},
    "records": dict(recs),
    "label_errors": label_errors,
    "time_s": {k: round(v, 4) for k, v in times.items()},
    "time_share": {k: round(v / total, 4) for k, v in times.items()},
  }


def merge(data_dir: str, cfg) -> dict[str, Any]:
  """Rebuilds the TFDS dataset from all results in DATA_DIR and writes curation_stats.json."""
  from wegen_jax.data import tfds_builder

  def results():
    return (r for r in iter_results(data_dir) if r["status"] == "ok" and r["records"])

  t = time.perf_counter()
  ids = [r["video_id"] for r in results()]
  splits = tfds_builder.build_dataset(
    data_dir, results, ids, cfg.validation_fraction, os.path.join(data_dir, WORK, "tfds_downloads")
  )
  stats = collect_stats(data_dir)
  stats["splits"] = splits
  stats["merge_s"] = round(time.perf_counter() - t, 4)
  stats["dataset_dir"] = tfds_builder.dataset_dir(data_dir)
  stats["config"] = json.loads(json.dumps(cfg.to_dict(), default=str))
  with open(os.path.join(data_dir, STATS), "w") as f:
    json.dump(stats, f, indent=1)
  return stats
