"""Flash attention kernels vs the XLA reference and cuDNN, forward and forward+backward.

  .venv/bin/python bench/attention_bench.py [--seqs 1024 2048 4096 8192 16384 --heads 16
      --kv-heads 16 --head-dim 128 --tokens 16384 --dtype bfloat16 --block-q 128 --block-kv 64]

On a GPU/TPU it times the platform's Pallas kernel ("flash"), the XLA reference ("xla")
and, on NVIDIA GPUs, cuDNN (jax.nn.dot_product_attention(implementation="cudnn")) for
each sequence length (batch = tokens // seq), causal and full, and prints a markdown table
with milliseconds, the kernel's TFLOP/s and the ratios xla/flash and cudnn/flash (> 1:
the kernel is faster). On CPU it is only a smoke test: tiny shapes, the kernel in Pallas
interpret mode, timings meaningless.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench.common import timeit  # noqa: E402
from wegen_jax.kernels import BlockSizes  # noqa: E402
from wegen_jax.kernels.dispatch import DEFAULT_BLOCKS, attention, choose  # noqa: E402
from wegen_jax.layers.attention import dot_product_attention  # noqa: E402


def implementations(platform: str, blocks: BlockSizes | None):
  impls = {"xla": dot_product_attention, "flash": functools.partial(attention, mode="flash", block_sizes=blocks)}
  if platform == "gpu":

    def cudnn(q, k, v, *, causal, **_):
      return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")

    impls["cudnn"] = cudnn
  return impls


def timed(fn, q, k, v, causal: bool, backward: bool) -> float | None:
  """Median seconds, or None when the implementation fails (OOM, unsupported shape)."""
  call = lambda q, k, v: fn(q, k, v, causal=causal)
  if backward:
    f = jax.jit(jax.grad(lambda q, k, v: call(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2)))
  else:
    f = jax.jit(call)
  try:
    return timeit(lambda: jax.block_until_ready(f(q, k, v)), warmup=2, repeats=5)
  except Exception as e:  # noqa: BLE001 - report and carry on with the other columns
    print(f"  ({getattr(fn, '__name__', 'impl')} failed: {type(e).__name__}: {str(e)[:120]})", file=sys.stderr)
    return None


def attention_flops(b, t, h, d, causal: bool, backward: bool) -> float:
  flops = 4 * b * t * t * h * d * (0.5 if causal else 1.0)  # QK^T and PV
  return flops * (3.5 if backward else 1.0)  # bwd recomputes QK^T, adds 4 matmuls


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--seqs", type=int, nargs="+", default=None)
  p.add_argument("--tokens", type=int, default=16384, help="batch = tokens // seq")
  p.add_argument("--heads", type=int, default=16)
  p.add_argument("--kv-heads", type=int, default=None)
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--block-q", type=int, default=None)
  p.add_argument("--block-kv", type=int, default=None)
  p.add_argument("--causal", choices=("both", "true", "false"), default="both")
  args = p.parse_args()

  platform = jax.default_backend()
  smoke = platform not in ("gpu", "tpu")
  seqs = args.seqs or ([64, 128] if smoke else [1024, 2048, 4096, 8192, 16384])
  tokens = 256 if smoke and args.seqs is None else args.tokens
  heads, kv_heads = (4, 2) if smoke else (args.heads, args.kv_heads or args.heads)
  head_dim = 32 if smoke else args.head_dim
  dtype = jnp.float32 if smoke else jnp.dtype(args.dtype)
  blocks = None
  if args.block_q or args.block_kv:
    base = DEFAULT_BLOCKS["gpu" if platform == "gpu" else "tpu"]
    blocks = BlockSizes(args.block_q or base.block_q, args.block_kv or base.block_kv)
  elif smoke:
    blocks = BlockSizes(32, 32)
  impls = implementations(platform, blocks)

  print(
    f"# attention bench on {jax.devices()[0].device_kind} ({platform}); heads {heads}/{kv_heads}, "
    f"head_dim {head_dim}, {jnp.dtype(dtype).name}, blocks {blocks or 'default'}"
  )
  if smoke:
    print("# CPU: smoke test only -- the kernel runs in Pallas interpret mode; timings mean nothing.")
  cols = list(impls)
  print(
    "| seq | batch | causal | pass | "
    + " | ".join(f"{c} ms" for c in cols)
    + " | flash TFLOP/s | "
    + " | ".join(f"{c}/flash" for c in cols if c != "flash")
    + " |"
  )
  print("|" + "---|" * (5 + len(cols) + len(cols) - 1))
  for seq in seqs:
    b = max(1, tokens // seq)
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (b, seq, heads, head_dim), dtype)
    k = jax.random.normal(keys[1], (b, seq, kv_heads, head_dim), dtype)
    v = jax.random.normal(keys[2], (b, seq, kv_heads, head_dim), dtype)
    choice = choose(q.shape, k.shape, dtype, mode="flash")
    if choice.kernel == "xla":
      print(f"# seq {seq}: no kernel for this call ({choice.reason}); 'flash' is the reference")
    for causal in {"both": (True, False), "true": (True,), "false": (False,)}[args.causal]:
      for backward in (False, True):
        ms = {c: timed(fn, q, k, v, causal, backward) for c, fn in impls.items()}
        fmt = lambda x: "n/a" if x is None else f"{x * 1e3:.2f}"
        flash = ms["flash"]
        tflops = (
          "n/a" if flash is None else f"{attention_flops(b, seq, heads, head_dim, causal, backward) / flash / 1e12:.1f}"
        )
        ratios = ["n/a" if ms[c] is None or flash is None else f"{ms[c] / flash:.2f}x" for c in cols if c != "flash"]
        print(
          f"| {seq} | {b} | {causal} | {'fwd+bwd' if backward else 'fwd'} | "
          + " | ".join(fmt(ms[c]) for c in cols)
          + f" | {tflops} | "
          + " | ".join(ratios)
          + " |"
        )


if __name__ == "__main__":
  main()
