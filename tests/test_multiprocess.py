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


@pytest.fixture
def fake_initialize(monkeypatch):
  """Records the keyword arguments distributed.initialize passes to jax.distributed.initialize."""
  import jax

  for name in (
    "WEGEN_COORDINATOR",
    "WEGEN_COORDINATOR_BIND",
    "WEGEN_INIT_TIMEOUT",
    "JAX_COORDINATOR_BIND_ADDRESS",
    "SLURM_NTASKS",
  ):
    monkeypatch.delenv(name, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  return calls


def test_coordinator_binds_to_its_own_address_not_all_interfaces(fake_initialize, monkeypatch):
  from wegen_jax.parallel import distributed

  port = free_port()
  assert distributed.initialize(f"localhost:{port}", 2, 0) == "explicit"
  assert fake_initialize[-1]["coordinator_address"] == f"localhost:{port}"
  assert fake_initialize[-1]["coordinator_bind_address"] == f"127.0.0.1:{port}"
  distributed.initialize(f"127.0.0.1:{port}", 2, 0)
  assert fake_initialize[-1]["coordinator_bind_address"] == f"127.0.0.1:{port}"
  # an explicit request wins: the environment variable, and over it the argument
  monkeypatch.setenv("WEGEN_COORDINATOR_BIND", f"0.0.0.0:{port}")
  distributed.initialize(f"localhost:{port}", 2, 0)
  assert fake_initialize[-1]["coordinator_bind_address"] == f"0.0.0.0:{port}"
  distributed.initialize(f"localhost:{port}", 2, 0, bind_address=f"[::]:{port}")
  assert fake_initialize[-1]["coordinator_bind_address"] == f"[::]:{port}"
  monkeypatch.delenv("WEGEN_COORDINATOR_BIND")
  monkeypatch.setenv("JAX_COORDINATOR_BIND_ADDRESS", f"0.0.0.0:{port}")  # jax's own override is left to jax
  distributed.initialize(f"localhost:{port}", 2, 0)
  assert "coordinator_bind_address" not in fake_initialize[-1]


def test_bind_override_under_slurm_and_bad_bind_addresses(fake_initialize, monkeypatch):
  from wegen_jax.parallel import distributed

  monkeypatch.setenv("SLURM_NTASKS", "2")
  assert distributed.initialize() == "slurm" and fake_initialize[-1] == {"initialization_timeout": 300}
  monkeypatch.setenv("WEGEN_COORDINATOR_BIND", "10.0.0.1:1234")
  distributed.initialize()
  assert fake_initialize[-1]["coordinator_bind_address"] == "10.0.0.1:1234"
  monkeypatch.delenv("SLURM_NTASKS")
  monkeypatch.setenv("WEGEN_COORDINATOR_BIND", "0.0.0.0")
  with pytest.raises(ValueError, match="WEGEN_COORDINATOR_BIND.*'0.0.0.0' is not host:port"):
    distributed.initialize("localhost:1234", 2, 0)
  monkeypatch.delenv("WEGEN_COORDINATOR_BIND")
  with socket.socket() as busy:  # the port is taken: a clear error before jax's 'Failed to start RPC server'
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    with pytest.raises(RuntimeError, match=f"cannot listen on the coordinator bind address 127.0.0.1:{port}"):
      distributed.initialize(f"localhost:{port}", 2, 0)
  assert len(fake_initialize) == 2


LISTENERS = """
import ipaddress, sys
from wegen_jax.parallel import distributed
port = int(sys.argv[1])
distributed.initialize(f"localhost:{port}", 1, 0)
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
  for line in open(table).read().splitlines()[1:]:
    local, state = line.split()[1], line.split()[3]
    addr, p = local.split(":")
    if state == "0A" and int(p, 16) == port:  # LISTEN
      ip = ipaddress.ip_address(b"".join(bytes.fromhex(addr[i : i + 8])[::-1] for i in range(0, len(addr), 8)))
      print("listen", getattr(ip, "ipv4_mapped", None) or ip)
"""


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's socket tables")
def test_localhost_coordinator_listens_on_loopback_only():
  port = free_port()
  out = subprocess.run(
    [sys.executable, "-c", LISTENERS, str(port)],
    cwd=REPO,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  listening = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("listen ")]
  assert listening and all(ip in ("127.0.0.1", "::1") for ip in listening), listening
