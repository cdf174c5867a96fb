"""Multi-host start-up: `jax.distributed.initialize` from the environment, failing fast.

Sources, in order:
  explicit   WEGEN_COORDINATOR=host:port WEGEN_NUM_PROCESSES=N WEGEN_PROCESS_ID=i (or the
             same values passed as arguments; used by tests and custom launchers)
  SLURM      SLURM_NTASKS > 1 (srun): jax reads SLURM_* itself; the coordinator is the first node
  TPU pods   TPU_WORKER_HOSTNAMES / MEGASCALE_*: jax discovers the pod itself
A single host with none of these runs without initialisation.

Where process 0's coordinator listens: jax's default is every interface ([::]:port), which
exposes an unauthenticated service to the whole network. For an explicit coordinator address
process 0 binds only to that host:port instead (`localhost` becomes 127.0.0.1), so a job on
localhost is reachable from this machine alone. To listen elsewhere, say so explicitly:
WEGEN_COORDINATOR_BIND=0.0.0.0:PORT (or the `bind_address` argument; jax's own
JAX_COORDINATOR_BIND_ADDRESS is honoured too). SLURM and TPU pods keep jax's default unless
WEGEN_COORDINATOR_BIND is set.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time

import jax


_log = logging.getLogger(__name__)
_LOOPBACK_NAMES = ("localhost", "ip6-localhost", "ip6-loopback")


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


def _split_host_port(address: str, what: str) -> tuple[str, int]:
  """('host', port) from 'host:port' or '[v6]:port'; ValueError naming `what` otherwise."""
  host, sep, port = address.strip().rpartition(":")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or (":" in host and host[0] != "["):
    raise ValueError(f"{what} {address!r} is not host:port (IPv6 as [addr]:port), e.g. 0.0.0.0:1234")
  return host, int(port)


def _is_loopback(ip: str) -> bool:
  try:
    return ipaddress.ip_address(ip.split("%")[0]).is_loopback
  except ValueError:
    return False


def _explicit_bind(bind_address: str | None) -> str | None:
  """The bind address the user asked for (argument, else WEGEN_COORDINATOR_BIND), checked."""
  bind_address = (bind_address or os.environ.get("WEGEN_COORDINATOR_BIND") or "").strip()
  if not bind_address:
    return None
  _split_host_port(bind_address, "the coordinator bind address (WEGEN_COORDINATOR_BIND)")
  return bind_address


def coordinator_bind_address(coordinator: str, bind_address: str | None = None) -> str | None:
  """host:port that process 0's coordinator service listens on, for an explicit coordinator.

  An explicit bind_address (argument, else WEGEN_COORDINATOR_BIND) wins; with neither, and
  JAX_COORDINATOR_BIND_ADDRESS set, None leaves the choice to jax. Otherwise the coordinator's
  own host:port, with `localhost` as 127.0.0.1, so nothing listens on other interfaces."""
  explicit = _explicit_bind(bind_address)
  if explicit:
    return explicit
  if os.environ.get("JAX_COORDINATOR_BIND_ADDRESS"):
    return None
  host, port = _split_host_port(coordinator, "the coordinator address")
  if host.lower() in _LOOPBACK_NAMES:
    host = "127.0.0.1"
  return f"{host}:{port}"


def check_bind_address(address: str, num_processes: int) -> None:
  """Raises a clear error unless this host can listen on address (jax's own error for that
  reads 'Failed to start RPC server'); warns when a non-loopback name resolves only to
  loopback here (e.g. Debian's 127.0.1.1 hostname entry), which other hosts cannot reach."""
  host, port = _split_host_port(address, "the coordinator bind address")
  name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
  hint = "choose another port, or set WEGEN_COORDINATOR_BIND=HOST:PORT to listen elsewhere"
  try:
    infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
  except OSError as e:
    raise RuntimeError(f"cannot resolve the coordinator bind host {name!r} ({e}); {hint}") from None
  errors = []
  for family, type_, proto, _, sockaddr in infos:
    try:
      with socket.socket(family, type_, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
        s.bind(sockaddr)
        break
    except OSError as e:
      errors.append(f"{sockaddr[0]}: {e.strerror or e}")
  else:
    raise RuntimeError(
      f"process 0 cannot listen on the coordinator bind address {address} ({'; '.join(errors)}): {hint}"
    )
  ips = sorted({info[4][0] for info in infos})
  if num_processes > 1 and name.lower() not in _LOOPBACK_NAMES and not _is_loopback(name):
    if ips and all(_is_loopback(ip) for ip in ips):
      _log.warning(
        "the coordinator host %r resolves to loopback (%s) on this machine, so process 0 listens only "
        "there: processes on other hosts cannot connect. Give an address they can reach, or set "
        "WEGEN_COORDINATOR_BIND=0.0.0.0:%d to listen on every interface.",
        name,
        ", ".join(ips),
        port,
      )


def initialize(
  coordinator: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  timeout_s: int | None = None,
  bind_address: str | None = None,
) -> str:
  """Initialises jax.distributed when the environment describes a multi-process job; returns
  which source was used ('explicit', 'slurm', 'tpu' or 'single').

  bind_address: host:port process 0's coordinator listens on (default WEGEN_COORDINATOR_BIND,
  else the coordinator's own host:port, see `coordinator_bind_address`)."""
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
    bind = coordinator_bind_address(coordinator, bind_address)
    if process_id == 0:  # process 0 hosts the coordinator; the others must reach it
      if bind:
        check_bind_address(bind, num_processes)
    else:
      wait_for_coordinator(coordinator, timeout_s)
  elif (_env_int("SLURM_NTASKS") or 1) > 1:
    source, kwargs, bind = "slurm", {}, _explicit_bind(bind_address)
  elif os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    source, kwargs, bind = "tpu", {}, _explicit_bind(bind_address)
  else:
    return "single"
  if bind:
    kwargs["coordinator_bind_address"] = bind
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
