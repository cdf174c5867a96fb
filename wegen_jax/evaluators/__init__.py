"""Evaluators named by `config.evals.<name>.type` (see wegen_jax/training/evals.py)."""


def require_predict_fns(predict_fns, names, evaluator: str) -> None:
  """Raises naming the first of `names` the system's predict functions lack."""
  for needed in names:
    if needed not in predict_fns:
      raise ValueError(
        f"{evaluator} evaluator needs predict function {needed!r}; this system has {sorted(predict_fns)}"
      )
