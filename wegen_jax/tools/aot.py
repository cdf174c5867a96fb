"""Ahead-of-time fit check: compiles the real train step for a TPU slice on this host.

  python -m wegen_jax.tools.aot --config configs/wegen.py:size=7b,stage=2 --topology v5p-64

The step is the trainer's own (wegen_jax.training.trainer.make_train_step: the config's
mesh, sharding rules, remat, dtype and grad accumulation), lowered with abstract parameters,
optimizer state and batch (jax.eval_shape: nothing is materialised) onto compile-only TPU
devices from libtpu. Prints per-chip memory, FLOPs per step and a step-time estimate at
--mfu; exits 1 when the step does not fit in HBM, naming the levers that would help.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host compiles; it needs no accelerator

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from wegen_jax.config_utils import resolve_config_argv  # noqa: E402
from wegen_jax.tools.fit import (  # noqa: E402
  EXIT_BAD_INPUT,
  EXIT_DOES_NOT_FIT,
  dump_to,
  format_report,
  gib,
  largest_buffers,
  levers,
  run,
)

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file[:arg]", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice, e.g. v5p-64, v6e-64 (or libtpu's v5p:2x4x4)")
_MFU = flags.DEFINE_float("mfu", 0.4, "model-FLOPs utilisation assumed for the step-time estimate")
_HBM_GIB = flags.DEFINE_float("hbm_gib", None, "override the per-chip HBM (GiB) the step must fit in")
_JSON = flags.DEFINE_string("json", None, "also write the report as JSON to this path")
_BUFFERS = flags.DEFINE_integer(
  "buffers", 0, "also print the N largest per-chip buffers of the compiled step (from XLA's buffer assignment dump)"
)
_DUMP_DIR = flags.DEFINE_string("dump_dir", None, "where --buffers dumps the compiled step (default: a temp dir)")


def main(_):
  if not _TOPOLOGY.value:
    print("error: --topology is required, e.g. --topology v5p-64", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  if not 0 < _MFU.value <= 1:
    print(f"error: --mfu={_MFU.value}: give a fraction in (0, 1], e.g. 0.4", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  dump_dir = None
  if _BUFFERS.value:
    import tempfile

    dump_dir = _DUMP_DIR.value or tempfile.mkdtemp(prefix="wegen_aot_")
    dump_to(dump_dir)
  try:
    report = run(_CONFIG.value, _TOPOLOGY.value, _MFU.value, _HBM_GIB.value)
  except (RuntimeError, ValueError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  print(format_report(report), flush=True)
  if dump_dir and "memory" in report and not report["memory"].get("at_least"):
    report["buffers"] = largest_buffers(dump_dir, _BUFFERS.value)
    print(
      f"buffers       {_BUFFERS.value} largest of the {gib(report['buffers']['heap_bytes'] or 0)} heap "
      f"(a slot holds values whose lifetimes do not overlap; {report['buffers']['report']}):"
    )
    for size, shapes in report["buffers"]["largest"]:
      print(f"  {gib(size):>11}  {shapes[:160]}")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(report, f, indent=2, default=str)
  if not report["fits"]:
    if "memory" in report:
      over = report["memory"]["total"] - report["hbm_bytes"]
      least = "at least " if report["memory"].get("at_least") else ""
      head = (
        f"does not fit: needs {least}{gib(report['memory']['total'])} per chip, "
        f"{least}{gib(over)} over the {gib(report['hbm_bytes'])} of HBM"
      )
      tips = levers(report["memory"], report)
    else:
      head = "does not fit: the TPU compiler ran out of HBM (see `compiler` above)"
      tips = levers(dict(arguments=0, temporaries=1), report)
    print("\nerror: " + head + ". Levers:\n" + "\n".join(f"  - {t}" for t in tips), file=sys.stderr)
    sys.exit(EXIT_DOES_NOT_FIT)
  print("fits")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, argv=resolve_config_argv())
