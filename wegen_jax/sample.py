"""`python -m wegen_jax.sample --config configs/wegen.py:size=tiny,stage=2 --workdir RUN [--step N] [--num 8]`

Loads a training run (its newest checkpoint, or --step) through the system's inference
interface, continues `--num` held-out validation examples and writes PNG grids
(inputs | target | generated, the instruction under each row) and summary.png to RUN/samples/.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from wegen_jax.config_utils import resolve_config_argv
from wegen_jax.evaluators.grids import write_grids

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file[:arg]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "training run directory")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)")
_NUM = flags.DEFINE_integer("num", 8, "validation examples to continue")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")


def main(_):
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  from wegen_jax.systems.base import get_system

  config = _CONFIG.value
  system = get_system(config).from_run(config, _WORKDIR.value, step=_STEP.value)
  samples = system.validation_samples(_NUM.value, _SEED.value)
  out = Path(_WORKDIR.value) / "samples"
  write_grids(samples, out)
  for i, s in enumerate(samples):
    print(f"{i:02d}: {s.text!r} -> {'an image' if s.generated is not None else 'no image'}")
  print(f"step {system.step}: wrote {len(samples)} grids to {out}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, argv=resolve_config_argv())
