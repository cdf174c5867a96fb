"""Runs the curation over a folder of videos: sharded, process-parallel, resumable, then merged into TFDS.

Layout of DATA_DIR:
  _work/results/<video key>.npz    one result per video (records or the failure reason), written atomically by
                                   the worker that processed it: a killed run loses only its in-flight videos,
                                   and a re-run skips every video that has a result made with the same config.
                                   Data only (resultfile.py: JSON + arrays, never pickle): a planted, corrupt or
                                   foreign file is reported and treated as missing (recomputed), never run
  wegen_dynamics/1.0.0/...         the TFDS array_record dataset, rebuilt from all results by `merge`
  curation_stats.json              videos seen/kept/failed (each failed file named with its reason), shots,
                                   the per-filter funnel, records per split, labelled counts, time per stage
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import json
import logging
import multiprocessing as mp
import os
import re
import signal
import sys
import threading
import time
from typing import Any, Iterator

import numpy as np

from wegen_jax.curation import resultfile
from wegen_jax.data import schema

log = logging.getLogger(__name__)

WORK = "_work"
STATS = "curation_stats.json"
# Config parts that do not change which records are selected (resume keeps results across them).
NOT_SELECTION = ("labeller", "workers", "progress", "validation_fraction")
START_METHOD = "spawn"  # of the worker pool: spawn (safe with FFmpeg threads) or forkserver
PARENT_POLL_S = 0.5  # how often a worker checks that the curation process is still alive


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
  return os.path.join(data_dir, WORK, "results", f"{safe}.{h}{resultfile.SUFFIX}")


def write_atomic(path: str, obj: dict[str, Any]) -> None:
  resultfile.write_atomic(path, obj)


def _check_result(res: Any, video_id: str | None = None) -> dict[str, Any]:
  """The fields the runner uses, with their types: a well-formed archive of the wrong content is rejected
  here instead of failing later in the middle of a merge."""

  def need(ok: bool, what: str) -> None:
    if not ok:
      raise resultfile.BadResultFile(f"not a curation result: {what}")

  is_str_list = lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)
  need(isinstance(res, dict), f"top level is {type(res).__name__}")
  for k in ("video_id", "path", "reason", "config_hash"):
    need(isinstance(res.get(k), str), f"{k} is {type(res.get(k)).__name__}")
  need(video_id is None or res["video_id"] == video_id, f"video_id {res['video_id']!r}, expected {video_id!r}")
  need(res.get("status") in ("ok", "failed"), f"status {res.get('status')!r}")
  for k in ("records", "shots"):
    need(isinstance(res.get(k), list), f"{k} is {type(res.get(k)).__name__}")
  for k in ("funnel", "times"):
    need(isinstance(res.get(k), dict), f"{k} is {type(res.get(k)).__name__}")
  need(all(isinstance(v, (int, float)) for v in res["times"].values()), "times are not numbers")
  need(
    all(isinstance(f, dict) and all(isinstance(n, int) for n in f.values()) for f in res["funnel"].values()),
    "funnel is not counts",
  )
  need(is_str_list(res.get("label_errors", [])), "label_errors are not texts")
  if res["status"] == "ok":
    need(isinstance(res.get("num_sampled"), int), "num_sampled is not an int")
    need(isinstance(res.get("crop"), list) and len(res["crop"]) == 4, "crop is not 4 numbers")
  for rec in res["records"]:
    need(isinstance(rec, dict), "a record is not a dict")
    fi = rec.get("frame_indices")
    need(isinstance(fi, np.ndarray) and fi.ndim == 1 and fi.dtype.kind in "iu", "frame_indices")
    fr = rec.get("frames")
    need(isinstance(fr, list) and len(fr) == len(fi) and all(isinstance(b, bytes) for b in fr), "frames")
    for k in ("boxes", "box_frame"):
      need(isinstance(rec.get(k), np.ndarray) and rec[k].dtype.kind in "iuf", k)
    for k in ("video_id", "caption", "labeller"):
      need(isinstance(rec.get(k), str), k)
    need(is_str_list(rec.get("dynamics")) and is_str_list(rec.get("box_label")), "dynamics/box_label")
    need(isinstance(rec.get("labelled"), bool), "labelled")
  return res


def load_result(path: str, video_id: str | None = None) -> dict[str, Any]:
  """The result stored at path; FileNotFoundError when there is none, resultfile.BadResultFile when the
  file is not a well-formed result (of video_id, when given). Nothing in the file is ever executed."""
  try:
    return _check_result(resultfile.load(path), video_id)
  except resultfile.BadResultFile as e:
    msg = str(e)
    raise resultfile.BadResultFile(msg if msg.startswith(path) else f"{path}: {msg}") from None


_WARNED: set[str] = set()


def _warn_once(msg: str, *args) -> None:
  """A merge reads every result three times: each bad file is reported once per process."""
  text = msg % args
  if text not in _WARNED:
    _WARNED.add(text)
    log.warning("%s", text)


def read_result(path: str, video_id: str | None = None) -> dict[str, Any] | None:
  """load_result, or None when the file is missing or bad (a bad one is logged as a warning)."""
  try:
    return load_result(path, video_id)
  except FileNotFoundError:
    return None
  except resultfile.BadResultFile as e:
    _warn_once("ignoring a result file that is not usable: %s", e)
    return None


def result_names(data_dir: str) -> list[str]:
  """Sorted file names of the results in DATA_DIR; warns once about files of the old pickle format, which are
  never loaded (their videos are curated again)."""
  d = os.path.join(data_dir, WORK, "results")
  names = sorted(os.listdir(d)) if os.path.isdir(d) else []
  legacy = [n for n in names if n.endswith(".pkl")]
  if legacy:
    _warn_once(
      "%d result files in %s use the old pickle format and are not loaded (a pickle can run code); "
      "their videos count as not done. Delete them once the run has finished.",
      len(legacy),
      d,
    )
  return [n for n in names if n.endswith(resultfile.SUFFIX)]


def iter_results(data_dir: str, bad: list[str] | None = None) -> Iterator[dict[str, Any]]:
  """Every readable result; unreadable ones are logged, skipped and appended (path: reason) to `bad`."""
  d = os.path.join(data_dir, WORK, "results")
  for name in result_names(data_dir):
    try:
      res = load_result(os.path.join(d, name))
    except (FileNotFoundError, resultfile.BadResultFile) as e:  # FileNotFoundError: deleted since listdir
      _warn_once("skipping a result file that is not usable: %s", e)
      if bad is not None:
        bad.append(str(e))
      continue
    yield res


def config_hash(cfg) -> str:
  d = {k: v for k, v in cfg.to_dict().items() if k not in NOT_SELECTION}
  return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- workers

_STATE: dict[str, Any] = {}


def _init_worker(cfg) -> None:
  from wegen_jax.curation import encoders

  _STATE["cfg"], _STATE["encoder"] = cfg, encoders.build_encoder(cfg.encoder)


def _init_pool_worker(cfg, main_pid: int) -> None:
  _exit_with_parent(main_pid)
  _init_worker(cfg)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else (the pid was reused)
    return False
  return True


def _exit_with_parent(main_pid: int, poll_s: float | None = None) -> None:
  """Makes this pool worker end when the curation process `main_pid` dies, even by SIGKILL (which runs no
  clean-up in the parent): otherwise the orphaned worker goes on decoding and writing results, and then waits
  forever on its task queue.

  On Linux, prctl(PR_SET_PDEATHSIG, SIGKILL) has the kernel kill this process when its parent dies: the
  curation process itself with spawn, the forkserver with forkserver (which exits when the curation process
  dies). Everywhere, a daemon thread also polls: it ends the process (os._exit, no clean-up: another run may
  already own the files) when it has been re-parented or, under a forkserver, when main_pid is gone. The
  thread also covers the race of a parent that died before prctl was called. (For the kernel the parent is the
  thread that started the worker: the one calling run_selection, which outlives its pool.)"""
  parent = os.getppid()
  if sys.platform.startswith("linux"):
    try:
      import ctypes

      libc = ctypes.CDLL(None, use_errno=True)
      PR_SET_PDEATHSIG = 1
      if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    except (OSError, AttributeError) as e:
      log.warning("prctl(PR_SET_PDEATHSIG) unavailable (%s); polling the parent instead", e)
  poll_s = PARENT_POLL_S if poll_s is None else poll_s

  def orphaned() -> bool:
    if os.getppid() != parent:
      return True
    return parent != main_pid and not _alive(main_pid)

  def watch() -> None:
    while not orphaned():
      time.sleep(poll_s)
    os._exit(1)

  if orphaned():  # the parent died before we got here
    os._exit(1)
  threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _work(path: str, video_id: str, out_path: str, chash: str) -> dict[str, Any]:
  """Processes one video in a worker and writes its result; returns a small summary."""
  from wegen_jax.curation import pipeline

  try:
    res = pipeline.process_video(path, video_id, _STATE["cfg"], _STATE["encoder"])
  except Exception as e:  # noqa: BLE001  any bug or odd file must not stop the run
    res = pipeline.failed(video_id, path, f"error: {type(e).__name__}: {e}")
  res["config_hash"] = chash
  try:
    write_atomic(out_path, res)
  except TypeError as e:  # a value the data-only format cannot hold: a bug, named in the stats
    res = pipeline.failed(video_id, path, f"error: result not storable: {e}", res.get("times"))
    write_atomic(out_path, dict(res, config_hash=chash))
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
  result_names(data_dir)  # warns about results in the old pickle format
  todo, unreadable = [], 0
  for rel in files:
    out = result_path(data_dir, rel)
    try:
      prev = load_result(out, rel)
    except FileNotFoundError:
      prev = None
    except resultfile.BadResultFile as e:
      log.warning("curating %s again, its result file is not usable: %s", rel, e)
      prev, unreadable = None, unreadable + 1
    if prev is None or prev["config_hash"] != chash:
      todo.append((os.path.join(videos_dir, rel), rel, out, chash))
  counts = collections.Counter(assigned=len(files), skipped_done=len(files) - len(todo))
  if unreadable:
    counts["recomputed_unreadable"] = unreadable
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
  """Process pool (START_METHOD; not fork: safe with FFmpeg threads). If a worker dies (a decoder crash), the
  videos it left unfinished are rerun one at a time in a single worker, so a crash names its own file and
  nothing else. Workers end when this process dies (_exit_with_parent)."""
  ctx = mp.get_context(START_METHOD)
  main_pid = os.getpid()
  make = lambda n: cf.ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_pool_worker, initargs=(cfg, main_pid))
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
  names = result_names(data_dir)[host_index::host_count]
  counts = collections.Counter()
  for name in _progress_iter(names, progress, "label"):
    path = os.path.join(d, name)
    try:
      res = load_result(path)
    except (FileNotFoundError, resultfile.BadResultFile) as e:
      log.warning("not labelling a result file that is not usable: %s", e)
      counts["unreadable"] += 1
      continue
    if not any(not r["labelled"] for r in res["records"]):
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
  bad: list[str] = []
  for res in iter_results(data_dir, bad):
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
    "unreadable_results": bad,
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
