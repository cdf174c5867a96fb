"""`python -m wegen_jax.train --config configs/lm_train.py --workdir DIR`: train from a config.

Rerunning the same command resumes from the newest checkpoint in DIR/checkpoints.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from wegen_jax.config_utils import resolve_config_argv

from wegen_jax.parallel import distributed
from wegen_jax.training.checkpointing import CheckpointMismatchError
from wegen_jax.training.trainer import NonFiniteLossError, train
from wegen_jax.training.validation import ConfigError
from wegen_jax.training.workdir_lock import WorkdirBusyError

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file[:arg]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl and TensorBoard files go here")
_COORDINATOR = flags.DEFINE_string(
  "coordinator", None, "multi-process: host:port of process 0 (SLURM and TPU pods are detected from the environment)"
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "multi-process: number of processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "multi-process: this process's index")
_COORDINATOR_BIND = flags.DEFINE_string(
  "coordinator_bind",
  None,
  "multi-process: host:port process 0 listens on (default: the --coordinator address itself, loopback for "
  "localhost; e.g. 0.0.0.0:PORT to accept other hosts on every interface)",
)


def main(_):
  logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
  try:
    distributed.initialize(
      _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, bind_address=_COORDINATOR_BIND.value
    )
  except (RuntimeError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  try:
    result = train(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, WorkdirBusyError, CheckpointMismatchError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
  print(f"done: step {result.step}, workdir {result.workdir}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, argv=resolve_config_argv())
