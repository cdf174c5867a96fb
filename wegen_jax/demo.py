"""The embedded default, end to end: `python -m wegen_jax.demo --workdir DIR` (`make demo`).

1. writes procedural video-dynamics clips as real video files (DIR/videos; DEMO_GRAMMAR),
2. curates them into the TFDS dynamics dataset with ground-truth labels (DIR/data),
3. trains WeGen tiny: stage 1 (the detokenizer; 32-px targets folded into 16x16x12 latents
   stand in for the SDXL VAE) and stage 2 (MLLM, from stage 1's UNet),
4. checks stage 1 (held-out frames redrawn from their own features, DIR/samples/stage1/),
   generates the target frame for held-out validation instructions, writes PNG grids
   (source | target | generated) to DIR/samples/, and prints validation metrics next to the
   copy-the-source baseline and the targets (DIR/validation.json).
Every step resumes: rerunning skips finished videos and continues training from checkpoints.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


from wegen_jax.config_utils import load_config


# The demo's scene grammar: plain and gradient backgrounds, solid objects. Striped and checked
# textures (2-5 px periods at the 32-px target) do not pass through 64 tiny visual tokens in minutes
# of training; the full grammar stays the curation's test corpus (configs/synthetic.py). Held-out
# stage-1 MAE: full grammar, 96 clips 10.3/255; this grammar, 192 clips 9.6 (measured together).
DEMO_GRAMMAR = dict(bg_textures=("plain", "gradient"), object_textures=("solid",))
# clips written per configs/wegen.py size: the longer small recipe sees twice the scenes
CLIPS = {"tiny": 192, "small": 384}


def write_videos(out: Path, num: int, seed: int) -> None:
  from wegen_jax.data import synthetic as S

  out.mkdir(parents=True, exist_ok=True)
  codecs = ["h264", "mpeg4", "mjpeg", "vp9"]
  for i in range(num):
    stem = out / f"clip_{i:03d}"
    if not list(out.glob(f"clip_{i:03d}.*")):
      spec = S.ClipSpec(num_frames=48, num_scenes=1 + (i % 4 == 3), **DEMO_GRAMMAR)
      frames, gt = S.generate_clip(seed + i, spec)
      S.write_clip(str(stem), frames, gt, codecs[i % len(codecs)])


def curate(videos: Path, data: Path) -> None:
  from wegen_jax.curation import __main__ as curate_cli

  code = curate_cli.main(
    [
      "--videos",
      str(videos),
      "--out",
      str(data),
      "--config",
      "configs/curate.py:preset=synthetic",
      "--label",
      "--no-progress",
      # a quarter of the clips held out: >= 32 labelled validation pairs to score on
      "--validation-fraction",
      "0.25",
    ]
  )
  if code:
    raise SystemExit(f"curation failed with exit code {code}")


def stage_config(stage: int, workdir: Path, steps: int | None, init_from: Path | None, size: str = "tiny"):
  c = load_config(f"configs/wegen.py:size={size},stage={stage}")
  c.data.dir = str(workdir / "data")
  c.compilation_cache_dir = str(workdir / "jax_cache")  # stages 1 and 2 reuse the initialiser
  if steps:
    c.total_steps = c.optimizer.total_steps = steps
  if init_from is not None:
    c.init_from = str(init_from)  # the components come from configs/wegen.py
  return c


# What the embedded default must reach (issue 19): a detokenizer that redraws what it is
# shown, and an MLLM that keeps the scene while moving the named object: found and placed, as
# located by its colour in the target frame (evaluators/dynamics.py: moved_*), nearer than
# copying the source places it.
TARGETS = {
  "stage1_frame_mae": ("<=", 8.0),
  "unchanged_mae": ("<=", 12.0),
  "moved_object_found": (">=", 0.75),
  "moved_position_error": ("<", "baseline_moved_position_error"),
}


def check_targets(metrics: dict) -> dict[str, bool]:
  ok = {}
  for name, (op, bound) in TARGETS.items():
    if name in metrics:
      bar = metrics[bound] if isinstance(bound, str) else bound
      ok[name] = {"<=": metrics[name] <= bar, ">=": metrics[name] >= bar, "<": metrics[name] < bar}[op]
  return ok


def dynamics_inputs(samples) -> list[dict]:
  return [
    dict(
      generated=s.generated,
      source=s.inputs[0],
      target=s.target,
      boxes=s.record["boxes"],
      box_frame=s.record["box_frame"],
      box_label=s.record["box_label"],
    )
    for s in samples
    if s.generated is not None
  ]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument(
    "--size",
    choices=sorted(CLIPS),
    default="tiny",
    help="configs/wegen.py size: tiny (~8 min on 2 CPU cores) or small (its longer recipe)",
  )
  p.add_argument(
    "--clips",
    type=int,
    default=None,
    help="default 192 (tiny) / 384 (small): a quarter held out by id hash (>= 32 labelled pairs to "
    "score), the rest to train on (more scenes for the detokenizer to generalise from; see DEMO_GRAMMAR)",
  )
  p.add_argument("--stage1-steps", type=int, default=None, help="default: configs/wegen.py at --size")
  p.add_argument("--stage2-steps", type=int, default=None, help="default: configs/wegen.py at --size")
  p.add_argument("--samples", type=int, default=32, help="held-out pairs generated and scored")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  from wegen_jax.evaluators.dynamics import evaluate
  from wegen_jax.training.trainer import train

  workdir = Path(args.workdir).absolute()
  times = {}
  start = time.perf_counter()
  write_videos(workdir / "videos", args.clips or CLIPS[args.size], args.seed)
  times["videos"] = time.perf_counter() - start
  curate(workdir / "videos", workdir / "data")
  times["curation"] = time.perf_counter() - start - sum(times.values())
  stage1 = stage_config(1, workdir, args.stage1_steps, None, args.size)
  train(stage1, workdir / "stage1")
  times["stage 1"] = time.perf_counter() - start - sum(times.values())

  from wegen_jax.evaluators.grids import write_grids
  from wegen_jax.evaluators.reconstruction import frame_mae
  from wegen_jax.systems.base import get_system

  redrawn = get_system(stage1).from_run(stage1, workdir / "stage1").validation_reconstructions(args.samples)
  write_grids(redrawn[:8], workdir / "samples" / "stage1")
  stage1_mae = frame_mae([s.target for s in redrawn], [s.generated for s in redrawn])
  times["stage 1 check"] = time.perf_counter() - start - sum(times.values())
  stage2 = stage_config(2, workdir, args.stage2_steps, workdir / "stage1", args.size)
  train(stage2, workdir / "stage2")
  times["stage 2"] = time.perf_counter() - start - sum(times.values())

  system = get_system(stage2).from_run(stage2, workdir / "stage2")
  samples = system.validation_samples(args.samples, args.seed)
  write_grids(samples, workdir / "samples")
  with_image = dynamics_inputs(samples)
  metrics = dict(stage1_frame_mae=stage1_mae, stage1_samples=len(redrawn))
  metrics.update(evaluate(with_image) if with_image else {})
  metrics["images_generated"] = f"{len(with_image)}/{len(samples)}"
  metrics["targets_met"] = check_targets(metrics)
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
