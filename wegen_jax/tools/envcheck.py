"""Launch-time environment check: fails fast, with the fix, before a pod or cluster job trains.

  python -m wegen_jax.tools.envcheck --platform tpu          # on every TPU worker
  python -m wegen_jax.tools.envcheck --platform gpu          # in every srun task

Checks, in order: the JAX build can drive the platform (libtpu / a CUDA plugin), this host
has the accelerator, and the multi-process description that wegen_jax.parallel.distributed
will use is complete (with --wait_coordinator S: process 0's coordinator accepts connections
within S seconds, for launchers that start process 0 first). Exit 0 prints one summary line;
a failure prints `error: ...` and exits 2.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys

from absl import app, flags

_PLATFORM = flags.DEFINE_enum("platform", None, ["tpu", "gpu", "cpu"], "the accelerator this job expects")
_COORDINATOR = flags.DEFINE_string(
  "coordinator", None, "host:port of process 0 (default: WEGEN_COORDINATOR, or the one jax derives under SLURM)"
)
_WAIT = flags.DEFINE_float(
  "wait_coordinator",
  0,
  "seconds to wait for the coordinator to accept connections (0: only check that its host resolves)",
)


class EnvError(RuntimeError):
  pass


def jax_version() -> str:
  from importlib.metadata import version

  return version("jax")


def check_build(platform: str) -> None:
  """The installed JAX can drive `platform` (without starting its runtime)."""
  pin = jax_version()
  if platform == "tpu" and importlib.util.find_spec("libtpu") is None:
    raise EnvError(
      f"this JAX build has no TPU runtime (libtpu is not installed): pip install "
      f"'jax[tpu]=={pin}' (or `pip install -e '.[tpu]'` in the repository)"
    )
  if platform == "gpu" and not any(
    importlib.util.find_spec(p) for p in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin")
  ):
    raise EnvError(
      f"this JAX build has no GPU support (no jax CUDA plugin): pip install 'jax[cuda12]=={pin}' on the GPU nodes"
    )


def check_devices(platform: str) -> str:
  """This host has the accelerator. TPUs are counted on the PCI bus, so no TPU runtime starts
  (on a pod slice that would wait for every worker)."""
  if platform == "tpu":
    from jax._src import hardware_utils

    chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
    if not chips:
      raise EnvError("no TPU chips on this host: run on a TPU VM (or choose --platform to match the machine)")
    return f"{chips} TPU chips"
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # a check must not hold GPU memory
  if platform == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # do not probe other runtimes (libtpu) for a CPU job
  import jax

  try:
    devices = jax.devices(platform)
  except RuntimeError as e:
    raise EnvError(
      f"JAX finds no {platform.upper()} here ({str(e).splitlines()[0][:200]}); devices: "
      f"{[d.platform for d in jax.devices()]}"
    ) from None
  return f"{len(devices)} {devices[0].device_kind} devices"


def coordinator_address() -> tuple[str | None, str]:
  """(host:port or None, source) as wegen_jax.parallel.distributed.initialize will choose."""
  if _COORDINATOR.value or os.environ.get("WEGEN_COORDINATOR"):
    for name in ("WEGEN_NUM_PROCESSES", "WEGEN_PROCESS_ID"):
      if not _COORDINATOR.value and not os.environ.get(name):
        raise EnvError(
          f"WEGEN_COORDINATOR is set but {name} is not: set WEGEN_COORDINATOR, "
          "WEGEN_NUM_PROCESSES and WEGEN_PROCESS_ID together"
        )
    return _COORDINATOR.value or os.environ["WEGEN_COORDINATOR"], "explicit"
  if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
    from jax._src.clusters.slurm_cluster import SlurmCluster

    if not SlurmCluster.is_env_present():
      raise EnvError(
        "SLURM_NTASKS > 1 but this is not an srun task (SLURM_STEP_NODELIST/SLURM_PROCID missing): "
        "start the job steps with srun"
      )
    return SlurmCluster.get_coordinator_address(None, os.environ.get("JAX_COORDINATOR_PORT")), "slurm"
  if os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return None, "tpu pod (jax discovers the workers)"
  return None, "single process"


def check_coordinator(address: str, wait_s: float) -> None:
  from wegen_jax.parallel.distributed import wait_for_coordinator

  host, sep, port = address.rpartition(":")
  if not sep or not host or not port.isdigit():
    raise EnvError(f"coordinator {address!r} is not host:port")
  try:
    socket.getaddrinfo(host, int(port))
  except socket.gaierror as e:
    raise EnvError(
      f"cannot resolve the coordinator host {host!r} ({e.strerror}): check the address "
      "(process 0's hostname or IP as the other hosts see it)"
    ) from None
  if wait_s:
    try:
      wait_for_coordinator(address, wait_s)
    except RuntimeError as e:
      raise EnvError(str(e)) from None


def main(_):
  try:
    check_build(_PLATFORM.value)
    devices = check_devices(_PLATFORM.value)
    address, source = coordinator_address()
    if address:
      check_coordinator(address, _WAIT.value)
  except EnvError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  where = f"coordinator {address} ({source})" if address else source
  print(f"envcheck ok: {socket.gethostname()}: jax {jax_version()}, {devices}, {where}", flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["platform"])
  app.run(main)
