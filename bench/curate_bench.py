"""python bench/curate_bench.py [--num 24] [--size 128] [--frames 72] [--workers 1 2] [--out /tmp/curate_bench]

Throughput of the DIIC curation on generator videos (codecs rotate h264/mpeg4/mjpeg/vp9): videos/s and
source frames/s of the selection pass per worker count, the share of worker time per stage (decode, shots,
features, select, encode_png), then the labelling pass (ground truth) and the TFDS merge. Prints a markdown
table (the figures in docs/PERFORMANCE.md, "## Curation"). Generation time is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wegen_jax.data import synthetic  # noqa: E402
from wegen_jax.config_utils import load_config  # noqa: E402
from wegen_jax.curation import pipeline, runner  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--num", type=int, default=24)
  p.add_argument("--size", type=int, default=128)
  p.add_argument("--frames", type=int, default=72)
  p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
  p.add_argument("--out", default="/tmp/curate_bench")
  args = p.parse_args()

  shutil.rmtree(args.out, ignore_errors=True)
  vids = os.path.join(args.out, "videos")
  gcfg = synthetic.default_corpus_config()
  gcfg.size, gcfg.num_frames = args.size, args.frames
  t = time.perf_counter()
  synthetic.write_corpus(vids, args.num, 0, gcfg)
  print(
    f"generated {args.num} clips of {args.frames} frames at {args.size}px in {time.perf_counter() - t:.1f}s "
    f"(not counted)"
  )
  src_frames = args.num * args.frames

  cfg = load_config(f"{REPO}/configs/curate.py")
  cfg.frame_size, cfg.analysis_size, cfg.sample_fps = args.size, 64, 6.0
  rows = []
  for w in args.workers:
    out = os.path.join(args.out, f"data_w{w}")
    cfg.workers = w
    t = time.perf_counter()
    runner.run_selection(vids, out, cfg, progress=False)
    sel = time.perf_counter() - t
    t = time.perf_counter()
    runner.run_labelling(out, cfg, progress=False)
    lab = time.perf_counter() - t
    stats = runner.merge(out, cfg)
    rows.append((w, sel, lab, stats))

  print(f"\nload average: {os.getloadavg()}, cpus: {os.cpu_count()}")
  print("\n| workers | videos/s | source frames/s | sampled frames/s | records | label pass s | merge s |")
  print("|---|---|---|---|---|---|---|")
  for w, sel, lab, st in rows:
    print(
      f"| {w} | {args.num / sel:.2f} | {src_frames / sel:.0f} | {st['sampled_frames'] / sel:.0f} | "
      f"{sum(st['splits'].values())} | {lab:.2f} | {st['merge_s']:.2f} |"
    )
  share = rows[0][3]["time_share"]
  print(
    "\nshare of worker time per stage (1st run): "
    + ", ".join(f"{k} {100 * share.get(k, 0):.0f}%" for k in pipeline.TIMED_STAGES)
  )
  print(json.dumps({"funnel": rows[0][3]["funnel"], "videos": rows[0][3]["videos"]}, indent=None))


if __name__ == "__main__":
  main()
