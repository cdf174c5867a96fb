"""Training metrics: WORKDIR/metrics.jsonl, TensorBoard event files, and a console line.

Only process 0 writes. MFU = model FLOPs per second (from the compiled step's cost
analysis) over the peak of the devices in use: a table for accelerators, and a matmul
measured at start-up on CPU.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Mapping

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per device (vendor figures).
PEAK_FLOPS = {
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v5": 459e12,
  "TPU v6 lite": 918e12,
  "TPU v6e": 918e12,
  "H100": 989e12,
  "H200": 989e12,
  "A100": 312e12,
}


def device_peak_flops() -> float:
  """Peak FLOP/s of one local device: table lookup, or a measured f32 matmul on CPU."""
  kind = jax.devices()[0].device_kind
  for name, peak in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return peak
  n = 1024
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(5):
    f(a).block_until_ready()
  return 5 * 2 * n**3 / (time.perf_counter() - start)


class MetricsWriter:
  def __init__(self, workdir: str | Path, *, total_steps: int):
    self.enabled = jax.process_index() == 0
    self.total_steps = total_steps
    self._jsonl = self._tb = None
    if self.enabled:
      workdir = Path(workdir)
      workdir.mkdir(parents=True, exist_ok=True)
      self._jsonl = open(workdir / "metrics.jsonl", "a")
      try:
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(workdir / "tensorboard"))
      except ImportError:
        print("tensorboardX not installed: no TensorBoard event files", file=sys.stderr)

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(k, float(v), step)
      self._tb.flush()
    width = 24
    done = int(width * step / max(self.total_steps, 1))
    shown = " ".join(
      f"{k} {v:.4g}"
      for k, v in metrics.items()
      if k in ("loss", "tokens_per_s", "images_per_s", "mfu", "lr") or k.startswith("loss_")
    )
    print(f"[{'#' * done}{'.' * (width - done)}] step {step}/{self.total_steps} {shown}", flush=True)

  def close(self) -> None:
    if self._jsonl:
      self._jsonl.close()
    if self._tb:
      self._tb.close()
