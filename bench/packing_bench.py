"""Real (non-padding) tokens per second of the WeGen tiny stage-2 train step, one example per
row against packed rows (data.pack), on curated synthetic clips built here.

  python -m bench.packing_bench [--clips 32] [--steps 6]

The same examples and the same trainer step; a packed row holds `pack` consecutive records in
a longer row with segment ids. Prints each layout's fill (real tokens / slots), step time and
real tokens/s, and the packed/padded ratio.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from bench.common import compare

# (pack, max_len, max_images, rows per batch): ~300-token pairs/triples fill 57% of a 512 row
LAYOUTS = {"padded": (1, 512, 3, 4), "packed": (2, 640, 6, 2)}


def _batches(config, count: int):
  from wegen_jax.systems.wegen.pipeline import make_dataset

  it = iter(make_dataset(config, "train", seed=0, global_batch=config.batch_size))
  return [jax.tree.map(jnp.asarray, next(it)) for _ in range(count)]


def _step(config):
  from wegen_jax.training.optim import make_optimizer, make_schedule
  from wegen_jax.training.task import get_task
  from wegen_jax.training.trainer import build_train_step

  task = get_task(config)
  model = task.build_model(nnx.Rngs(0))
  graphdef, params, frozen = nnx.split(model, task.trainable(), ...)
  tx = make_optimizer(config.optimizer)
  step = jax.jit(build_train_step(task, graphdef, tx, 1, make_schedule(config.optimizer)))
  return step, params, frozen, tx.init(params)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--clips", type=int, default=32)
  p.add_argument("--steps", type=int, default=6, help="timed steps per layout")
  args = p.parse_args(argv)
  from wegen_jax.config_utils import load_config
  from wegen_jax.demo import curate, write_videos

  work = Path(tempfile.mkdtemp(prefix="wegen_pack_"))
  write_videos(work / "videos", args.clips, seed=0)
  curate(work / "videos", work / "data")
  runs = {}
  for name, (pack, max_len, max_images, rows) in LAYOUTS.items():
    c = load_config("configs/wegen.py:size=tiny,stage=2")
    c.data.update(dir=str(work / "data"), pack=pack, max_len=max_len, max_images=max_images)
    c.model.diffusion_images_per_example = 2 * pack  # every example's target(s), as unpacked
    c.batch_size = rows
    c.optimizer = ml_collections.ConfigDict(dict(c.optimizer, grad_clip=1.0))
    batches = _batches(c, args.steps)
    step, params, frozen, opt_state = _step(c)
    real = float(np.mean([float((b["segment_ids"] > 0).sum()) for b in batches]))
    slots = float(np.prod(batches[0]["input_ids"].shape))
    state = {"i": 0}

    def run(step=step, params=params, frozen=frozen, opt_state=opt_state, batches=batches, state=state):
      b = batches[state["i"] % len(batches)]
      state["i"] += 1
      out = step(params, frozen, opt_state, b, jax.random.key(0), 10)
      jax.block_until_ready(out[2]["loss"])

    runs[name] = (run, real, slots)
  (run_a, real_a, slots_a), (run_b, real_b, slots_b) = runs["padded"], runs["packed"]
  t_a, t_b = compare(run_a, run_b, warmup=1, repeats=args.steps)
  print("| layout | fill | step | real tokens/s |\n|---|---|---|---|")
  for name, (real, slots, t) in dict(padded=(real_a, slots_a, t_a), packed=(real_b, slots_b, t_b)).items():
    print(f"| {name} {LAYOUTS[name][:3]} | {real / slots:.0%} | {t * 1e3:.0f} ms | {real / t:,.0f} |")
  print(f"packed / padded real tokens/s: {(real_b / t_b) / (real_a / t_a):.2f}x")


if __name__ == "__main__":
  main()
