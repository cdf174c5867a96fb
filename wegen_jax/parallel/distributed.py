"""Multi-host start-up: `jax.distributed.initialize` from the environment, failing fast.

Sources, in order:
  explicit   WEGEN_COORDINATOR=host:port WEGEN_NUM_PROCESSES=N WEGEN_PROCESS_ID=i (or the
             same values passed as arguments; used by tests and custom launchers)
  SLURM      SLURM_NTASKS > 1 (srun): jax reads SLURM_* itself; the coordinator is the first node
  TPU pods   TPU_WORKER_HOSTNAMES / MEGASCALE_*: jax discovers the pod itself
A single host with none of these runs without initialisation.
"""

from __future__ import annotations

import os
import socket
import time

import jax


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  return int(value) if value not in (None, "") else None


def wait_for_coordinator(address: str, timeout_s: float) -> None:
  """Raises a clear error unless host:port accepts a TCP connection within timeout_s (jax's
  own client aborts the process with a fatal log instead)."""
  host, _, port = address.rpartition(":")
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=2):
        return
    except OSError as e:
      if time.monotonic() > deadline:
        raise RuntimeError(
          f"could not reach the coordinator {address} within {timeout_s}s ({e}). Start "
          "process 0 first, and check the address, the port and the firewall."
        ) from None
      time.sleep(0.5)


def initialize(
  coordinator: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  timeout_s: int | None = None,
) -> str:
  """Initialises jax.distributed when the environment describes a multi-process job; returns
  which source was used ('explicit', 'slurm', 'tpu' or 'single')."""
  timeout_s = timeout_s or _env_int("WEGEN_INIT_TIMEOUT") or 300
  coordinator = coordinator or os.environ.get("WEGEN_COORDINATOR")
  num_processes = num_processes if num_processes is not None else _env_int("WEGEN_NUM_PROCESSES")
  process_id = process_id if process_id is not None else _env_int("WEGEN_PROCESS_ID")
  if coordinator:
    if num_processes is None or process_id is None:
      raise ValueError(
        "a coordinator address needs the number of processes and this process's id "
        "(WEGEN_NUM_PROCESSES, WEGEN_PROCESS_ID)"
      )
    source, kwargs = (
      "explicit",
      dict(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id),
    )
    if process_id != 0:  # process 0 hosts the coordinator; the others must reach it
      wait_for_coordinator(coordinator, timeout_s)
  elif (_env_int("SLURM_NTASKS") or 1) > 1:
    source, kwargs = "slurm", {}
  elif os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    source, kwargs = "tpu", {}
  else:
    return "single"
  try:
    jax.distributed.initialize(initialization_timeout=timeout_s, **kwargs)
  except Exception as e:  # jax raises RuntimeError/XlaRuntimeError with long texts
    where = kwargs.get("coordinator_address", "the coordinator jax derived from the environment")
    raise RuntimeError(
      f"jax.distributed.initialize ({source}) failed: could not reach {where} within "
      f"{timeout_s}s or the job description is inconsistent ({type(e).__name__}: "
      f"{str(e).splitlines()[0][:300]}). Check that every process uses the same "
      "coordinator address and process count, and that the port is open."
    ) from None
  return source
