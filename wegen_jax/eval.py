"""`python -m wegen_jax.eval --config configs/eval/wegen_dynamics.py --workdir RUN [--step N] [--only a,b] [--force]`

Runs the config's evaluators (`config.evals`, wegen_jax/evaluators/) on a training run's
checkpoint (the newest, or --step) with the same predict functions the trainer's periodic evals
use, and writes RUN/eval/<step>.json. Resumable: an evaluator whose results that file already
holds is skipped unless --force, and generated images kept in RUN/eval/<step>/<name>/ are reused
(a killed eval generates only what it had not written; delete that folder to draw them again).
Several processes (--coordinator/--num_processes/--process_id, or SLURM / TPU pods detected from
the environment) split the prompts of the generating evaluators; RUN must be on a disk they share.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from wegen_jax.config_utils import resolve_config_argv
from wegen_jax.parallel import distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file[:arg] with config.evals", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "training run directory (its checkpoints/)")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)")
_ONLY = flags.DEFINE_list("only", None, "evaluator names to run (default: all of config.evals)")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "multi-process: host:port of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "multi-process: number of processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "multi-process: this process's index")
_FORCE = flags.DEFINE_bool(
  "force", False, "recompute evaluators already in RUN/eval/<step>.json (their kept images are reused)"
)


def main(_):
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  except (RuntimeError, ValueError) as e:
    sys.exit(f"error: {e}")
  import jax
  from flax import nnx

  from wegen_jax.training.checkpointing import load_run_parameters
  from wegen_jax.training.evals import build_evaluators, run_evaluators
  from wegen_jax.training.task import get_task

  config, workdir = _CONFIG.value, Path(_WORKDIR.value)
  evaluators = build_evaluators(config.get("evals"))  # a bad spec fails before loading weights
  if not evaluators:
    sys.exit("config.evals is empty: name at least one evaluator (see configs/eval/)")
  unknown = sorted(set(_ONLY.value or ()) - set(evaluators))
  if unknown:
    sys.exit(f"--only names {unknown}, which config.evals does not have ({sorted(evaluators)})")
  if not (workdir / "checkpoints").is_dir():
    sys.exit(f"{workdir} has no checkpoints/: pass the --workdir of a training run")
  task = get_task(config)
  model = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(config.get("seed", 0))))
  step = load_run_parameters(model, workdir, step=_STEP.value)
  path = workdir / "eval" / f"{step}.json"
  done = set(json.loads(path.read_text())) if path.exists() and not _FORCE.value else set()
  wanted = _ONLY.value or list(evaluators)
  for name in wanted:
    if name in done:
      print(f"{name}: already in {path} (--force recomputes it)")
  names = [n for n in wanted if n not in done]
  flat = run_evaluators(evaluators, task.predict_fns(model), step, workdir, names) if names else {}
  if jax.process_index() == 0:  # the one that writes the file
    print(json.dumps({"step": step, **json.loads(path.read_text())}, indent=2))
  else:
    print(json.dumps({"step": step, "process": jax.process_index(), **flat}, indent=2))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, argv=resolve_config_argv())
