"""Periodic evaluators from `config.evals`, run by the trainer and by the eval entry point.

`config.evals` maps a name to a dict whose `type` names a module under wegen_jax/evaluators/
(or a full dotted module path, for a lab's own evaluator); the module's `Evaluator` class is
built from the remaining fields. An evaluator has `every` (steps; 0 = only at the end) and
`run(predict_fns, step) -> {metric: float}`, where predict_fns are the system's (see
systems.base.System.predict_fns); a `run` with an `out_dir` parameter gets
WORKDIR/eval/<step>/<name>/ for its images. Results go to metrics.jsonl as `eval/<name>/<metric>`
and to WORKDIR/eval/<step>.json.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any, Callable, Mapping

import jax

from wegen_jax.training.metrics import strict_json_value

EVALUATORS_PACKAGE = "wegen_jax.evaluators"


def evaluator_module(kind: str):
  name = kind if "." in kind else f"{EVALUATORS_PACKAGE}.{kind}"
  try:
    module = importlib.import_module(name)
  except ModuleNotFoundError as e:
    if e.name != name:
      raise
    raise ValueError(
      f"evaluator type {kind!r}: no module {name} (types are modules under wegen_jax/evaluators/)"
    ) from e
  if not hasattr(module, "Evaluator"):
    raise ValueError(f"evaluator module {name} has no Evaluator class")
  return module


def build_evaluators(evals: Mapping[str, Mapping] | None) -> dict[str, Any]:
  """name -> Evaluator, from config.evals (empty when absent)."""
  out = {}
  for name, spec in dict(evals or {}).items():
    spec = dict(spec)
    if "type" not in spec:
      raise ValueError(f"config.evals.{name} needs a `type` (a module under wegen_jax/evaluators/)")
    kind = spec.pop("type")
    out[name] = evaluator_module(kind).Evaluator(**spec)
  return out


def due(evaluator, step: int, total_steps: int) -> bool:
  every = int(getattr(evaluator, "every", 0) or 0)
  return step == total_steps or (every > 0 and step % every == 0)


def run_evaluators(
  evaluators: Mapping[str, Any],
  predict_fns: Mapping[str, Callable],
  step: int,
  workdir: str | Path | None,
  names=None,
) -> dict[str, float]:
  """Runs the named (default: all) evaluators; writes WORKDIR/eval/<step>.json (merged with
  what an earlier run of that step wrote) and returns the flat `eval/<name>/<metric>` dict."""
  flat, results = {}, {}
  for name in names if names is not None else evaluators:
    run = evaluators[name].run
    extra = {}
    if workdir is not None and "out_dir" in inspect.signature(run).parameters:  # it writes images
      extra["out_dir"] = Path(workdir) / "eval" / str(step) / name
    metrics = {k: float(v) for k, v in run(predict_fns, step, **extra).items()}
    results[name] = metrics
    flat.update({f"eval/{name}/{k}": v for k, v in metrics.items()})
  if workdir is not None and results and jax.process_index() == 0:  # one writer on a shared disk
    path = Path(workdir) / "eval" / f"{step}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update({k: {m: strict_json_value(v) for m, v in r.items()} for k, r in results.items()})
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=2, sort_keys=True, allow_nan=False))
    tmp.replace(path)
  return flat
