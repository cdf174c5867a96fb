"""Shared benchmark helpers: timing, the machine's measured matmul peak, a report line."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np


def timeit(fn, *, warmup: int = 2, repeats: int = 5) -> float:
  """Median seconds of fn() (fn must block until its result is ready)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def compare(fn_a, fn_b, *, warmup: int = 2, repeats: int = 5) -> tuple[float, float]:
  """Median seconds of fn_a() and fn_b(), calls alternated so that load from other processes
  on a shared machine hits both alike (each fn must block until its result is ready)."""
  for _ in range(warmup):
    fn_a()
    fn_b()
  a, b = [], []
  for _ in range(repeats):
    for fn, out in ((fn_a, a), (fn_b, b)):
      start = time.perf_counter()
      fn()
      out.append(time.perf_counter() - start)
  return float(np.median(a)), float(np.median(b))


def matmul_peak_flops(n: int = 2048) -> float:
  """Measured float32 FLOP/s of a large square matmul under XLA on this machine."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  seconds = timeit(lambda: f(a).block_until_ready(), warmup=2, repeats=7)
  return 2 * n**3 / seconds


def torch_matmul_peak_flops(n: int = 2048) -> float:
  import torch

  a = torch.randn(n, n)
  seconds = timeit(lambda: a @ a, warmup=2, repeats=7)
  return 2 * n**3 / seconds


def row(name: str, jax_value: float, torch_value: float, unit: str) -> str:
  return f"| {name} | {jax_value:,.1f} {unit} | {torch_value:,.1f} {unit} | {jax_value / torch_value:.2f}x |"
