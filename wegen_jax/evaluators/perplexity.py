"""Held-out next-token cross-entropy and perplexity of a language model.

  evals.text = dict(type="perplexity", every=100, num_rows=64)

Uses the system's `heldout_tokens(num)` (its validation text as token rows) and
`score_tokens(rows) -> (sum of NLL, tokens)`; scores in batches of `batch_size` rows.
"""

from __future__ import annotations

import math

from wegen_jax.evaluators import require_predict_fns


class Evaluator:
  def __init__(self, every: int = 0, num_rows: int = 64, batch_size: int = 16):
    if num_rows < 1 or batch_size < 1:
      raise ValueError(f"perplexity evaluator: num_rows={num_rows} and batch_size={batch_size} must be >= 1")
    self.every, self.num_rows, self.batch_size = every, num_rows, batch_size

  def run(self, predict_fns, step):
    require_predict_fns(predict_fns, ("heldout_tokens", "score_tokens"), "perplexity")
    rows = predict_fns["heldout_tokens"](self.num_rows)
    total = count = 0.0
    for start in range(0, len(rows), self.batch_size):
      t, c = predict_fns["score_tokens"](rows[start : start + self.batch_size])
      total, count = total + t, count + c
    ce = total / max(count, 1.0)
    return {"ce": ce, "perplexity": math.exp(min(ce, 80.0)), "tokens": count}
