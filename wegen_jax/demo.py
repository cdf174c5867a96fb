"""The embedded default, end to end: `python -m wegen_jax.demo --workdir DIR` (`make demo`).

1. writes procedural video-dynamics clips as real video files (DIR/videos),
2. curates them into the TFDS dynamics dataset with ground-truth labels (DIR/data),
3. trains WeGen tiny: stage 1 (the detokenizer; 32-px targets folded into 16x16x12 latents
   stand in for the SDXL VAE) and stage 2 (MLLM, from stage 1's UNet),
4. generates the target frame for held-out validation instructions, writes PNG grids
   (source | target | generated) to DIR/samples/, and prints validation metrics next to the
   copy-the-source baseline (DIR/validation.json).
Every step resumes: rerunning skips finished videos and continues training from checkpoints.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from configs import wegen as wegen_configs


def write_videos(out: Path, num: int, seed: int) -> None:
  from wegen_jax.data import synthetic as S

  out.mkdir(parents=True, exist_ok=True)
  codecs = ["h264", "mpeg4", "mjpeg", "vp9"]
  for i in range(num):
    stem = out / f"clip_{i:03d}"
    if not list(out.glob(f"clip_{i:03d}.*")):
      frames, gt = S.generate_clip(seed + i, S.ClipSpec(num_frames=48, num_scenes=1 + (i % 4 == 3)))
      S.write_clip(str(stem), frames, gt, codecs[i % len(codecs)])


def curate(videos: Path, data: Path) -> None:
  from wegen_jax.data.curate import __main__ as curate_cli

  code = curate_cli.main(
    ["--videos", str(videos), "--out", str(data), "--config", "configs/curate.py:synthetic", "--label", "--no-progress"]
  )
  if code:
    raise SystemExit(f"curation failed with exit code {code}")


def stage_config(stage: int, workdir: Path, steps: int | None, init_from: Path | None):
  c = wegen_configs.get_config(f"size=tiny,stage={stage}")
  c.data.dir = str(workdir / "data")
  c.compilation_cache_dir = str(workdir / "jax_cache")  # stages 1 and 2 reuse the initialiser
  if steps:
    c.total_steps = c.optimizer.total_steps = steps
  if init_from is not None:
    c.init_from = str(init_from)  # the components come from configs/wegen.py
  return c


def validation_samples(config, model, num: int, seed: int):
  """(grid rows, metric inputs) for `num` validation pairs, sampled with the config's guidance."""
  from wegen_jax.data.image_preprocess import preprocess_image
  from wegen_jax.data.sequences import Turn, build_sequence
  from wegen_jax.data.source import dynamics_dataset
  from wegen_jax.data.tokenizer import load_tokenizer
  from wegen_jax.generation import SamplingConfig
  from wegen_jax.systems.wegen.generate import ImageSampling, ImageTokens, generate

  tok = load_tokenizer(config.data.tokenizer)
  records = dynamics_dataset(config.data.dir, "validation", num_frames=2)
  picked = [r for r in (records[i] for i in range(len(records))) if r is not None and r["labelled"]][:num]
  samples = []
  for i, record in enumerate(picked):
    prompt = build_sequence(tok, [Turn(user_text=record["dynamics"][0], user_images=1)], config.model.num_image_tokens)
    ids = prompt.input_ids[:-1][None]  # drop the turn's </s>: the model answers
    pixels = preprocess_image(record["frames"][0], config.data.image_size)[None, None]
    out = generate(
      model,
      ids,
      tokens=ImageTokens.from_tokenizer(tok, config.model.num_image_tokens),
      pixel_values=pixels,
      rng=jax.random.key(seed + i),
      sampling=SamplingConfig(max_new_tokens=config.model.num_image_tokens + 4, stop_tokens=(tok.eos_id,)),
      image_sampling=ImageSampling(num_steps=config.sample.num_steps, guidance_scale=config.sample.guidance_scale),
    )
    source, target = record["frames"][0], record["frames"][1]
    generated = out.images[0][0] if len(out.images[0]) else None
    if generated is not None and generated.shape != target.shape:
      generated = np.asarray(Image.fromarray(generated).resize(target.shape[1::-1], Image.BICUBIC))
    samples.append(dict(record=record, source=source, target=target, generated=generated, text=record["dynamics"][0]))
  return samples


def write_grids(samples, out: Path) -> None:
  out.mkdir(parents=True, exist_ok=True)
  for i, s in enumerate(samples):
    gen = s["generated"] if s["generated"] is not None else np.zeros_like(s["target"])
    grid = np.concatenate([s["source"], s["target"], gen], axis=1)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(out / f"{i:02d}.png")
  (out / "instructions.txt").write_text("\n".join(f"{i:02d}: {s['text']}" for i, s in enumerate(samples)) + "\n")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument(
    "--clips",
    type=int,
    default=64,
    help="64: the held-out clips' backgrounds also occur in training (24 left black and grey out)",
  )
  p.add_argument("--stage1-steps", type=int, default=None, help="default: configs/wegen.py tiny")
  p.add_argument("--stage2-steps", type=int, default=None, help="default: configs/wegen.py tiny")
  p.add_argument("--samples", type=int, default=8)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  from wegen_jax.evaluators.dynamics import evaluate
  from wegen_jax.training.trainer import train

  workdir = Path(args.workdir).absolute()
  times = {}
  start = time.perf_counter()
  write_videos(workdir / "videos", args.clips, args.seed)
  times["videos"] = time.perf_counter() - start
  curate(workdir / "videos", workdir / "data")
  times["curation"] = time.perf_counter() - start - sum(times.values())
  stage1 = stage_config(1, workdir, args.stage1_steps, None)
  train(stage1, workdir / "stage1")
  times["stage 1"] = time.perf_counter() - start - sum(times.values())
  stage2 = stage_config(2, workdir, args.stage2_steps, workdir / "stage1")
  train(stage2, workdir / "stage2")
  times["stage 2"] = time.perf_counter() - start - sum(times.values())

  from wegen_jax.systems.wegen.sample import load_run

  model = load_run(stage2, workdir / "stage2")
  samples = validation_samples(stage2, model, args.samples, args.seed)
  write_grids(samples, workdir / "samples")
  with_image = [
    dict(
      generated=s["generated"],
      source=s["source"],
      target=s["target"],
      boxes=s["record"]["boxes"],
      box_frame=s["record"]["box_frame"],
      box_label=s["record"]["box_label"],
    )
    for s in samples
    if s["generated"] is not None
  ]
  metrics = evaluate(with_image) if with_image else {}
  metrics["images_generated"] = f"{len(with_image)}/{len(samples)}"
  times["generation"] = time.perf_counter() - start - sum(times.values())
  metrics["seconds"] = {k: round(v, 1) for k, v in times.items()}
  metrics["final_losses"] = {
    k: v
    for k, v in json.loads((workdir / "stage2" / "metrics.jsonl").read_text().splitlines()[-1]).items()
    if k.startswith("loss")
  }
  (workdir / "validation.json").write_text(json.dumps(metrics, indent=2))
  print(json.dumps(metrics, indent=2))
  print(f"samples (source | target | generated): {workdir / 'samples'}; total {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
  main()
