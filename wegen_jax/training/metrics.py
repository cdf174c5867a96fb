"""Training metrics: WORKDIR/metrics.jsonl, TensorBoard event files, and a console line.

Only process 0 writes. MFU = model FLOPs per second (from the compiled step's cost
analysis) over the peak of the devices in use: a table for accelerators, and a matmul
measured at start-up on CPU.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

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


def device_peak_flops(devices=None) -> float:
  """Peak FLOP/s of `devices` together (default: all local): the table for accelerators; on CPU
  a float32 matmul measured on all of them at once, best of several, since virtual CPU devices
  share the host's cores (one device's matmul alone would understate what eight of them reach)."""
  devices = list(devices or jax.local_devices())
  kind = devices[0].device_kind
  for name, peak in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return peak * len(devices)
  n = 1024
  mesh = jax.sharding.Mesh(np.array(devices), ("d",))
  a = jax.device_put(jnp.ones((len(devices), n, n), jnp.float32), NamedSharding(mesh, PartitionSpec("d")))
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(5):
    start = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return len(devices) * 2 * n**3 / best


def strict_json_value(v: float) -> float | None:
  """JSON has no NaN/inf: they are written as null."""
  return v if math.isfinite(v) else None


def _row_step(line: str) -> int | None:
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None


def prepare_metrics_file(path: Path, resumed_step: int | None) -> None:
  """Makes metrics.jsonl continue exactly from the step the run resumes at: rows after it (logged
  before a kill, replayed now) are dropped, as are torn lines. With no checkpoint to resume from,
  an existing file belongs to a run that is gone: it is moved aside (with a warning) and a fresh
  one starts."""
  if not path.exists() or path.stat().st_size == 0:
    return
  if resumed_step is None:
    aside = path.with_name(f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}.old")
    path.replace(aside)
    print(
      f"warning: {path} exists but there is no checkpoint to resume from: moved it to {aside.name} and "
      "starting a fresh metrics file (the run starts from step 0)",
      file=sys.stderr,
      flush=True,
    )
    return
  lines = path.read_text().splitlines()
  kept = [line for line in lines if (step := _row_step(line)) is not None and step <= resumed_step]
  if len(kept) != len(lines):
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


class MetricsWriter:
  def __init__(self, workdir: str | Path, *, total_steps: int, resumed_step: int | None = None):
    """resumed_step: the checkpoint step the run resumes from (None: a fresh start)."""
    self.enabled = jax.process_index() == 0
    self.total_steps = total_steps
    self._jsonl = self._tb = None
    if self.enabled:
      workdir = Path(workdir)
      workdir.mkdir(parents=True, exist_ok=True)
      prepare_metrics_file(workdir / "metrics.jsonl", resumed_step)
      self._jsonl = open(workdir / "metrics.jsonl", "a")
      try:
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(workdir / "tensorboard"))
      except ImportError:
        print("tensorboardX not installed: no TensorBoard event files", file=sys.stderr)

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: strict_json_value(float(v)) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
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
