"""The task's own training losses on its validation split (every system has them).

  evals.val = dict(type="validation_loss", every=100, num_batches=4)

Reports `loss` and each `loss_*` term (WeGen: ce, mse, cos, diffusion) averaged over the first
`num_batches` validation batches, with fixed noise, so two checkpoints compare on equal terms.
"""

from __future__ import annotations

from wegen_jax.evaluators import require_predict_fns


class Evaluator:
  def __init__(self, every: int = 0, num_batches: int = 4):
    if num_batches < 1:
      raise ValueError(f"validation_loss evaluator: num_batches={num_batches} must be >= 1")
    self.every, self.num_batches = every, num_batches

  def run(self, predict_fns, step):
    require_predict_fns(predict_fns, ("validation_losses",), "validation_loss")
    return predict_fns["validation_losses"](self.num_batches)
