"""Train-step MFU on one device: an LLM preset, or the WeGen train step.

  python -m bench.mfu_bench llm --preset qwen2_5_vl_3b --seq 4096 --batch 2 --dtype bfloat16 --remat full
  python -m bench.mfu_bench wegen --set model.llm.num_layers=8 ...   # configs/wegen.py:size=tiny,stage=2 + overrides

Prints step time, tokens/s, FLOP/s and MFU against the device's peak
(`training.metrics.device_peak_flops`: the vendor bf16 table on GPU/TPU, a measured float32 matmul
on CPU). LLM: model FLOPs (6 x matmul parameters per token + attention, `bench.llm_bench`) and the
program's own count (`training.flops.jaxpr_flops`, remat recomputation included). WeGen: the
program's count only (vision tower, LLM, UNet, VAE). Compile time excluded and printed.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from wegen_jax.training.flops import jaxpr_flops  # noqa: E402
from wegen_jax.training.metrics import device_peak_flops  # noqa: E402


def _time(run, steps: int) -> tuple[float, float]:
  """(compile + first step seconds, median step seconds)."""
  start = time.perf_counter()
  run()
  first = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return first, float(np.median(times))


def _report(name: str, first: float, step_s: float, tokens: int, flops: dict[str, float]) -> None:
  peak = device_peak_flops(jax.local_devices()[:1])
  print(
    f"{name}: device {jax.devices()[0].device_kind}, peak {peak / 1e9:,.0f} GFLOP/s; compile+first step {first:.1f} s"
  )
  print(f"  step {step_s * 1e3:.1f} ms, {tokens / step_s:,.0f} tokens/s")
  for label, f in flops.items():
    print(f"  {label}: {f / 1e9:,.1f} GFLOP/step, {f / step_s / 1e9:,.0f} GFLOP/s, MFU {f / step_s / peak:.1%}")


def llm(args) -> None:
  import optax
  from flax import nnx

  from bench.llm_bench import train_flops_per_token
  from wegen_jax.models.llm import LLM, LLMConfig
  from wegen_jax.models.presets import LLM_DEFAULTS, LLM_PRESETS
  from wegen_jax.training import cross_entropy, next_token_labels

  fields = dict(LLM_DEFAULTS, **LLM_PRESETS[args.preset])
  # M-RoPE off: text-only positions are plain RoPE, and the step takes token ids only.
  fields.update(
    dtype=args.dtype, remat=args.remat, attention_impl=args.attention, scan_layers=args.scan, mrope_section=None
  )
  if args.layers:
    fields["num_layers"] = args.layers
  cfg = LLMConfig(**fields)
  graphdef, params = nnx.split(LLM(cfg, rngs=nnx.Rngs(0)))
  params = nnx.as_pure(params)
  tx = optax.adamw(1e-4, weight_decay=0.1)
  opt_state = tx.init(params)

  def step(params, opt_state, ids):
    loss_fn = lambda p: cross_entropy(nnx.merge(graphdef, p)(ids), next_token_labels(ids))[0]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  ids = jnp.asarray(np.random.RandomState(0).randint(0, cfg.vocab_size, (args.batch, args.seq)))
  program = jaxpr_flops(jax.jit(step).trace(params, opt_state, ids).jaxpr)
  step = jax.jit(step, donate_argnums=(0, 1))
  state = [params, opt_state]

  def run():
    state[0], state[1], loss = step(state[0], state[1], ids)
    loss.block_until_ready()

  first, step_s = _time(run, args.steps)
  tokens = args.batch * args.seq
  model = train_flops_per_token(cfg, args.seq) * tokens
  n = sum(x.size for x in jax.tree.leaves(state[0]))
  _report(
    f"LLM {args.preset} ({n / 1e9:.2f}B, {cfg.num_layers} layers, {cfg.dtype}, remat {cfg.remat}, "
    f"attention {cfg.attention_impl}), batch {args.batch} x seq {args.seq}",
    first,
    step_s,
    tokens,
    {"model FLOPs (6N + attention)": model, "program FLOPs (jaxpr, with remat)": program},
  )


def _set(config, assignment: str) -> None:
  key, _, value = assignment.partition("=")
  *path, last = key.split(".")
  node = config
  for p in path:
    node = node[p]
  try:
    node[last] = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    node[last] = value


def wegen(args) -> None:
  import tempfile
  from pathlib import Path

  from bench.packing_bench import _batches, _step
  from wegen_jax.config_utils import load_config
  from wegen_jax.demo import curate, write_videos

  work = Path(tempfile.mkdtemp(prefix="wegen_mfu_"))
  write_videos(work / "videos", args.clips, seed=0)
  curate(work / "videos", work / "data")
  c = load_config("configs/wegen.py:size=tiny,stage=2")
  c.data.dir = str(work / "data")
  c.batch_size = args.batch
  for assignment in args.set:
    _set(c, assignment)
  batches = _batches(c, 2)
  step, params, frozen, opt_state = _step(c)
  program = jaxpr_flops(step.trace(params, frozen, opt_state, batches[0], jax.random.key(0), 10).jaxpr)
  i = [0]

  def run():
    out = step(params, frozen, opt_state, batches[i[0] % 2], jax.random.key(0), 10)
    i[0] += 1
    jax.block_until_ready(out[2]["loss"])

  first, step_s = _time(run, args.steps)
  tokens = int(np.prod(batches[0]["input_ids"].shape))
  n = sum(x.size for x in jax.tree.leaves(params))
  _report(
    f"WeGen stage-2 step ({n / 1e9:.3f}B trainable, overrides {args.set or 'none'}), batch {args.batch}",
    first,
    step_s,
    tokens,
    {"program FLOPs (jaxpr, with remat)": program},
  )


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("model", choices=["llm", "wegen"])
  p.add_argument("--preset", default="tiny_llama")
  p.add_argument("--layers", type=int, default=0, help="override the preset's layer count")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--remat", default="none")
  p.add_argument("--attention", default="xla")
  p.add_argument("--scan", action="store_true", help="llm: scanned layers (fast compiles)")
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--clips", type=int, default=8, help="wegen: curated synthetic clips")
  p.add_argument("--set", action="append", default=[], help="wegen: config override key=value")
  args = p.parse_args(argv)
  (llm if args.model == "llm" else wegen)(args)


if __name__ == "__main__":
  main()
