"""Cloud TPU slice names -> compile-only TPU devices (libtpu, no TPU needed) and per-chip
figures.

Slice names follow Cloud TPU: v5p counts TensorCores (2 per chip: v5p-64 = 32 chips),
v6e and v5e count chips. Physical shapes are the documented slice topologies.
"""

from __future__ import annotations

import dataclasses
import os

# name -> libtpu topology name
SLICES = {
  "v5p-8": "v5p:2x2x1",
  "v5p-16": "v5p:2x2x2",
  "v5p-32": "v5p:2x2x4",
  "v5p-64": "v5p:2x4x4",
  "v5p-128": "v5p:4x4x4",
  "v5p-256": "v5p:4x4x8",
  "v5p-512": "v5p:4x8x8",
  "v6e-1": "v6e:1x1",
  "v6e-4": "v6e:2x2",
  "v6e-8": "v6e:2x4",
  "v6e-16": "v6e:4x4",
  "v6e-32": "v6e:4x8",
  "v6e-64": "v6e:8x8",
  "v6e-128": "v6e:8x16",
  "v6e-256": "v6e:16x16",
  "v5e-1": "v5e:1x1",
  "v5e-4": "v5e:2x2",
  "v5e-8": "v5e:2x4",
  "v5e-16": "v5e:4x4",
  "v5e-32": "v5e:4x8",
  "v5e-64": "v5e:8x8",
  "v5e-128": "v5e:8x16",
  "v5e-256": "v5e:16x16",
}

# device_kind -> (HBM bytes per chip, dense bf16 peak FLOP/s per chip). Compile-only devices
# expose no memory stats; the HBM figures are the limits libtpu 0.0.42.1 itself enforces
# (from its out-of-memory message), the peaks are the Cloud TPU spec sheets.
GiB = 1 << 30
CHIPS = {
  "TPU v5": (int(95.74 * GiB), 459e12),  # v5p (95 GB spec)
  "TPU v6 lite": (int(31.25 * GiB), 918e12),  # v6e / Trillium (32 GB spec)
  "TPU v5 lite": (int(15.75 * GiB), 197e12),  # v5e (16 GB spec)
  "TPU v4": (32 * GiB, 275e12),
}


@dataclasses.dataclass
class Slice:
  name: str
  devices: list
  hbm_bytes: int
  peak_flops: float

  @property
  def chips(self) -> int:
    return len(self.devices)


def topology_name(name: str) -> str:
  """'v5p-64' -> 'v5p:2x4x4'; a libtpu name ('v5p:2x4x4') passes through."""
  if ":" in name:
    return name
  if name not in SLICES:
    raise ValueError(f"unknown TPU slice {name!r}; known: {', '.join(SLICES)} (or a libtpu topology such as v5p:4x4x4)")
  return SLICES[name]


def get_slice(name: str) -> Slice:
  """Compile-only devices of a TPU slice on this host; raises with the fix if libtpu is missing."""
  try:
    import libtpu  # noqa: F401
  except ImportError:
    raise RuntimeError(
      "ahead-of-time TPU compilation needs libtpu on this host: pip install -e '.[tpu]' (or `make install`)"
    ) from None
  from jax.experimental import topologies

  topo = topology_name(name)
  dims = [int(d) for d in topo.split(":")[1].split("x")]
  chips = 1
  for d in dims:
    chips *= d
  # Hosts hold 2x2 chips on multi-host slices (compile-time layout only; memory is per chip).
  host = (2, 2, 1) if chips >= 4 else tuple(dims + [1] * (3 - len(dims)))
  # libtpu looks for a local TPU first: do not ask the metadata server. Compiling touches no
  # chip, so several compiling processes (parallel tests) may share libtpu's lock file.
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    devices = topologies.get_topology_desc(
      platform="tpu", topology_name=topo, chip_config_name="default", chips_per_host_bounds=host, num_slices=1
    ).devices
  except Exception as e:
    raise RuntimeError(
      f"libtpu could not describe topology {topo!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    ) from None
  kind = devices[0].device_kind
  if kind not in CHIPS:
    raise RuntimeError(f"no HBM/peak figures for {kind!r}; add them to wegen_jax.tools.topology.CHIPS")
  hbm, peak = CHIPS[kind]
  return Slice(name, list(devices), hbm, peak)
