"""The LLM train step with and without this repo's CPU layout fixes, in one process, alternating.

  .venv/bin/python bench/llm_step_ab.py [--layers 4 --hidden 512 --seq 512 --batch 4]

"before": Dense/Embed.attend as 3-D `jnp.dot` and cross-entropy as log_softmax + gather (the
formulations replaced on 2026-12-05); "after": the current code. Same weights, same batch; prints
the median step times and the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench import op_profile as profile  # noqa: E402
from bench.common import compare  # noqa: E402
from wegen_jax.layers import linear  # noqa: E402
from wegen_jax.training import losses  # noqa: E402


def old_cross_entropy(logits, labels, ignore_index=losses.IGNORE_INDEX):
  valid = labels != ignore_index
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
  count = valid.sum()
  return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(count, 1), count


def main():
  p = argparse.ArgumentParser()
  for name, default in dict(layers=4, hidden=512, heads=8, vocab=8192, seq=512, batch=4, repeats=5).items():
    p.add_argument(f"--{name}", type=int, default=default)
  args = p.parse_args()
  after = profile._llm_step(args)
  after()  # traced and compiled with the current code
  import bench.llm_bench as llm_bench

  saved = linear.matmul_2d, llm_bench.cross_entropy
  linear.matmul_2d, llm_bench.cross_entropy = jnp.dot, old_cross_entropy
  try:
    before = profile._llm_step(args)
    before()
  finally:
    linear.matmul_2d, llm_bench.cross_entropy = saved
  t_before, t_after = compare(before, after, warmup=1, repeats=args.repeats)
  print(
    f"LLM train step, {args.layers} layers, d {args.hidden}, vocab {args.vocab}, batch {args.batch} x seq {args.seq}; "
    f"load average {os.getloadavg()[0]:.1f}"
  )
  print(f"before {t_before * 1e3:.0f} ms, after {t_after * 1e3:.0f} ms: {t_before / t_after:.2f}x")


if __name__ == "__main__":
  main()
