"""Tiny LM training runs shared by the trainer and reliability tests (one layer, 32 tokens)."""

import json
from pathlib import Path

from wegen_jax.configs import lm_train as lm_config


def config(**overrides):
  c = lm_config.get_config()
  c.total_steps, c.log_every, c.ckpt_every = 12, 1, 4
  c.async_checkpoints = False
  c.data.seq_len = 32
  c.model.num_layers = 1
  for k, v in overrides.items():
    target = c
    *parents, leaf = k.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = v
  return c


def saved_steps(workdir) -> list[int]:
  root = Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


def logged_losses(workdir) -> dict[int, float]:
  """Last logged loss per step (a resumed run re-logs steps after its checkpoint)."""
  out = {}
  for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
    r = json.loads(line)
    out[r["step"]] = r["loss"]
  return out
