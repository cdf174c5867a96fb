"""Two processes on localhost (CPU collectives) train the tiny LM and log the same losses as
one process with the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARGS = [
  "--config",
  "configs/lm_train.py",
  "--config.total_steps=3",
  "--config.log_every=1",
  "--config.ckpt_every=3",
  "--config.model.num_layers=1",
  "--config.data.seq_len=32",
  "--config.async_checkpoints=False",
]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def losses(workdir) -> list[float]:
  return [json.loads(l)["loss"] for l in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def run(args, devices, extra_env=None, **kw):
  env = dict(
    os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu", **(extra_env or {})
  )
  return subprocess.Popen(
    [sys.executable, "-m", "wegen_jax.train", *ARGS, *args],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    **kw,
  )


def test_two_processes_match_one(tmp_path):
  single = run(["--workdir", str(tmp_path / "one")], devices=8)
  out, _ = single.communicate(timeout=600)
  assert single.returncode == 0, out[-3000:]
  port = free_port()
  procs = [
    run(
      ["--workdir", str(tmp_path / "two"), f"--coordinator=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
      devices=4,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
  assert len(one) == len(two) == 3
  for a, b in zip(one, two):
    assert abs(a - b) <= 1e-5 * abs(a)


def test_unreachable_coordinator_fails_fast_with_a_clear_message():
  from wegen_jax.parallel import distributed

  with pytest.raises(ValueError, match="WEGEN_NUM_PROCESSES"):
    distributed.initialize("localhost:1")
  proc = run(
    ["--workdir", "/tmp/unused", f"--coordinator=localhost:{free_port()}", "--num_processes=2", "--process_id=1"],
    devices=4,
    extra_env={"WEGEN_INIT_TIMEOUT": "5"},
  )
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 2 and "error: could not reach the coordinator localhost" in out
  assert "Traceback" not in out
