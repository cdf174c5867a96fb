"""Per-op profile of a compiled JAX step: where its time goes, summed by XLA op name.

  .venv/bin/python bench/op_profile.py llm [--layers 4 --hidden 512 --seq 512 --batch 4]
  .venv/bin/python bench/op_profile.py unet

Runs the step under `jax.profiler.trace(create_perfetto_trace=True)`, reads the Chrome-format
trace it writes, sums the device-thread events by op name (XLA fusions/dots/convolutions, with
numbered suffixes folded: `fusion.12` -> `fusion`) and prints the largest, with their share
of all op time and of the step's wall time. `summarize()` is the reusable part.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

_SKIP = re.compile(r"^(ThunkExecutor|PjRt|Execute|TfrtCpu|ThreadPool|\$|end_of|TraceMe)", re.I)


def trace_events(fn, steps: int = 3) -> tuple[list[dict], float]:
  """Runs fn() `steps` times under the profiler; returns the complete events and the wall seconds."""
  with tempfile.TemporaryDirectory() as d:
    start = time.perf_counter()
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(steps):
        fn()
    wall = time.perf_counter() - start
    (path,) = glob.glob(os.path.join(d, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
      data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  return [e for e in events if e.get("ph") == "X" and "dur" in e], wall


def summarize(events: list[dict], *, fold: bool = True) -> list[tuple[str, float, int]]:
  """(name, total seconds, count) per op name, largest first; Python/runtime frames dropped."""
  total: dict[str, float] = collections.defaultdict(float)
  count: dict[str, int] = collections.Counter()
  for e in events:
    name = e["name"]
    if _SKIP.match(name) or name.endswith(".py") or "(" in name:
      continue
    key = re.sub(r"[._]\d+$", "", name) if fold else name
    total[key] += e["dur"] * 1e-6
    count[key] += 1
  return sorted(((k, v, count[k]) for k, v in total.items()), key=lambda r: -r[1])


def report(fn, steps: int, top: int, fold: bool) -> None:
  fn()  # compile outside the trace
  events, wall = trace_events(fn, steps)
  rows = summarize(events, fold=fold)
  op_total = sum(r[1] for r in rows)
  print(f"{steps} steps, wall {wall / steps * 1e3:.1f} ms/step, op time {op_total / steps * 1e3:.1f} ms/step")
  print("| op | ms/step | calls/step | share of op time |\n|---|---|---|---|")
  for name, sec, n in rows[:top]:
    print(f"| {name} | {sec / steps * 1e3:.2f} | {n / steps:.0f} | {sec / op_total:.1%} |")


def _llm_step(args):
  import numpy as np
  import optax

  from bench.llm_bench import jax_train_step
  from wegen_jax.models.llm import LLM, LLMConfig

  cfg = LLMConfig(
    family="llama",
    vocab_size=args.vocab,
    hidden_size=args.hidden,
    intermediate_size=int(args.hidden * 8 / 3) // 64 * 64,
    num_layers=args.layers,
    num_heads=args.heads,
  )
  from flax import nnx

  step = jax_train_step(LLM(cfg, rngs=nnx.Rngs(0)), optax.adamw(1e-4, weight_decay=0.0))
  ids = jax.numpy.asarray(np.random.RandomState(0).randint(0, args.vocab, (args.batch, args.seq)))
  return lambda: step(ids)


def _unet_step(args):
  import numpy as np
  import torch
  from diffusers import UNet2DConditionModel as TorchUNet

  from bench.diffusion_bench import BATCH, CONFIG, LATENT, SEQ, jax_train_step
  from wegen_jax import convert

  torch.manual_seed(0)
  with tempfile.TemporaryDirectory() as d:
    TorchUNet(**CONFIG).save_pretrained(d)
    unet = convert.load_diffusers_unet(d, attention_impl="blocked")
  step, params, opt_state = jax_train_step(unet)
  rng = np.random.RandomState(0)
  x = jax.numpy.asarray(rng.randn(BATCH, 4, LATENT, LATENT).astype(np.float32))
  t = jax.numpy.asarray(rng.randint(0, 1000, (BATCH,)))
  ctx = jax.numpy.asarray(rng.randn(BATCH, SEQ, CONFIG["cross_attention_dim"]).astype(np.float32))
  state = [params, opt_state]

  def run():
    state[0], state[1], loss = step(state[0], state[1], x, t, ctx, x)
    loss.block_until_ready()

  return run


def main():
  p = argparse.ArgumentParser()
  p.add_argument("step", choices=["llm", "unet"])
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--hidden", type=int, default=512)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--vocab", type=int, default=8192)
  p.add_argument("--seq", type=int, default=512)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--no-fold", action="store_true", help="keep numbered op names apart")
  args = p.parse_args()
  fn = _llm_step(args) if args.step == "llm" else _unet_step(args)
  report(fn, args.steps, args.top, not args.no_fold)


if __name__ == "__main__":
  main()
