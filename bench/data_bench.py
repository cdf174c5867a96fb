"""Input pipeline throughput (curated records -> packed rows -> device batches) against what the
trainers consume.

  python -m bench.data_bench [--clips 32] [--batches 24] [--pack 1]

Builds curated synthetic clips (as `bench.packing_bench`), runs WeGen's Grain pipeline
(`systems/wegen/pipeline.make_dataset`: decode the record's frames, tokenize, pack, batch)
through `data.loader.DeviceLoader` (device put, prefetch) and times the batches the trainer
would receive. Consumption:
- tiny: the tiny stage-2 train step measured here on the same batches (rows/s it consumes).
- 7B: the pipeline run again at the 7B recipe's image sizes (448 px ViT, 1024 px VAE) and row
  length, against the rows/s one host feeds at a given MFU, from 6 x parameters FLOPs per token:
  `--host-devices 8 --peak 989e12 --mfu 0.4` (H100 bf16 dense peak; a figure, not a run).
Prints both ratios (pipeline rows/s over consumed rows/s); the target is >= 5x.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

WEGEN_7B_TRAINABLE = 6.8e9  # docs/PERFORMANCE.md: WeGen-7B's trainable weights


def pipeline_rows_per_s(config, batches: int) -> tuple[float, float]:
  """(rows/s, real tokens per row) of the loader, after warm-up batches."""
  from wegen_jax.data.loader import DeviceLoader
  from wegen_jax.systems.wegen.pipeline import make_dataset

  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  ds = make_dataset(config, "train", seed=0, global_batch=config.batch_size)
  loader = DeviceLoader(ds, lambda name, x: device, prefetch=2)
  for _ in range(2 * (1 + config.data.get("workers", 0))):  # warm-up: every worker process started
    jax.block_until_ready(next(loader))
  tokens = []
  start = time.perf_counter()
  for _ in range(batches):
    b = jax.block_until_ready(next(loader))
    tokens.append(float((np.asarray(b["segment_ids"]) > 0).sum()))
  seconds = time.perf_counter() - start
  loader.close()
  rows = batches * config.batch_size
  return rows / seconds, float(np.sum(tokens)) / rows


def write_large_videos(out: Path, num: int, size: int) -> None:
  """Generator clips drawn at `size` px (the demo's are 64), for records of real-video size."""
  from wegen_jax.data import synthetic as S

  out.mkdir(parents=True, exist_ok=True)
  for i in range(num):
    frames, gt = S.generate_clip(i, S.ClipSpec(size=size, num_frames=24))
    S.write_clip(str(out / f"clip_{i:03d}"), frames, gt, "h264")


def device_resize_ms(config, repeats: int = 5) -> float:
  """Median ms of data/device_resize.tower_inputs on one row's frames (uint8 [N, F, F, 3])."""
  from wegen_jax.data.device_resize import tower_inputs

  d = config.data
  frames = jax.device_put(
    np.random.default_rng(0).integers(0, 256, (d.max_images, d.frame_size, d.frame_size, 3), np.uint8)
  )
  fn = jax.jit(lambda f: tower_inputs(f, d.image_size, d.vae_image_size))
  jax.block_until_ready(fn(frames))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(frames))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def tiny_step_rows_per_s(config, steps: int) -> float:
  from bench.packing_bench import _batches, _step

  batches = _batches(config, 2)
  step, params, frozen, opt_state = _step(config)
  run = lambda b: jax.block_until_ready(step(params, frozen, opt_state, b, jax.random.key(0), 10)[2]["loss"])
  run(batches[0])
  start = time.perf_counter()
  for i in range(steps):
    run(batches[i % 2])
  return steps * config.batch_size / (time.perf_counter() - start)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--clips", type=int, default=32)
  p.add_argument("--batches", type=int, default=24, help="timed loader batches")
  p.add_argument("--steps", type=int, default=4, help="timed tiny train steps")
  p.add_argument("--pack", type=int, default=1)
  p.add_argument("--host-devices", type=int, default=8)
  p.add_argument("--peak", type=float, default=989e12, help="per-device FLOP/s (H100 bf16 dense)")
  p.add_argument("--mfu", type=float, default=0.4)
  p.add_argument("--seq-7b", type=int, default=1024, help="7B recipe row length (configs/wegen.py)")
  p.add_argument("--workers", type=int, default=2, help="Grain worker processes for the last 7B row")
  p.add_argument("--frame-size-7b", type=int, default=256, help="record frame size of the 7B rows (curation's default)")
  args = p.parse_args(argv)
  from wegen_jax.config_utils import load_config
  from wegen_jax.curation import __main__ as curate_cli
  from wegen_jax.demo import curate, write_videos

  work = Path(tempfile.mkdtemp(prefix="wegen_data_bench_"))
  write_videos(work / "videos", args.clips, seed=0)
  curate(work / "videos", work / "data")
  c = load_config("configs/wegen.py:size=tiny,stage=2")
  c.data.update(dir=str(work / "data"), pack=args.pack)
  rows_s, tokens_row = pipeline_rows_per_s(c, args.batches)
  tiny_s = tiny_step_rows_per_s(c, args.steps)
  # The 7B recipe's rows: its image sizes and row length (configs/wegen.py), the tiny tokenizer,
  # records of 256-px frames as curation writes for real videos (configs/curate.py default).
  write_large_videos(work / "videos_7b", max(8, args.clips // 2), args.frame_size_7b)
  curate_cli.main(
    [
      "--videos",
      str(work / "videos_7b"),
      "--out",
      str(work / "data_7b"),
      "--label",
      "--no-progress",
      "--config",
      f"configs/curate.py:preset=synthetic,frame_size={args.frame_size_7b}",
    ]
  )
  c7 = load_config("configs/wegen.py:size=tiny,stage=2")
  c7.data.update(dir=str(work / "data_7b"), pack=args.pack, max_len=args.seq_7b, max_images=4)
  c7.data.update(image_size=448, vae_image_size=1024)
  c7.batch_size = 8
  rows7_s, _ = pipeline_rows_per_s(c7, max(2, args.batches // 4))
  # ... and with data.device_preprocess (the 7B config's default): uint8 frames shipped as curated,
  # resized in the train step; that resize is timed apart on this host's device
  c7.data.update(device_preprocess=True, frame_size=args.frame_size_7b)
  rows7_dev_s, _ = pipeline_rows_per_s(c7, args.batches)
  c7.data.workers = args.workers
  rows7_workers_s, _ = pipeline_rows_per_s(c7, args.batches)
  resize_ms = device_resize_ms(c7)
  # A 7B row of seq-7b tokens; the host consumes host_devices * peak * mfu / (6 N) tokens/s.
  rows_7b = args.host_devices * args.peak * args.mfu / (6 * WEGEN_7B_TRAINABLE) / args.seq_7b
  print(f"pipeline: {rows_s:,.1f} rows/s ({rows_s * tokens_row:,.0f} real tokens/s, batch {c.batch_size})")
  print("| consumer | rows/s consumed | pipeline / consumer |\n|---|---|---|")
  print(f"| tiny stage-2 train step (measured) | {tiny_s:,.1f} | {rows_s / tiny_s:.1f}x |")
  print(
    f"| WeGen-7B, {args.host_devices} devices/host at {args.mfu:.0%} MFU of {args.peak / 1e12:.0f} TFLOP/s "
    f"(estimate; {args.frame_size_7b}-px records, host preprocessing to 448/1024 px, {rows7_s:,.1f} rows/s) | {rows_7b:,.2f} | {rows7_s / rows_7b:.1f}x |"
  )
  print(
    f"| the same, data.device_preprocess ({args.frame_size_7b}-px uint8 frames shipped, "
    f"{rows7_dev_s:,.1f} rows/s) | {rows_7b:,.2f} | {rows7_dev_s / rows_7b:.1f}x |"
  )
  print(
    f"| the same in {args.workers} Grain worker processes (data.workers; the 7B config has 8) "
    f"({rows7_workers_s:,.1f} rows/s) | {rows_7b:,.2f} | {rows7_workers_s / rows_7b:.1f}x |"
  )
  print(
    f"device-side resize of one 7B row ({c7.data.max_images} frames -> 448 bilinear + 1024 bicubic, "
    f"data/device_resize.py) on {jax.devices()[0].platform}: {resize_ms:.1f} ms"
  )


if __name__ == "__main__":
  main()
