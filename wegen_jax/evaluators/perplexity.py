"""Held-out next-token cross-entropy and perplexity of a language model.

  evals.text = dict(type="perplexity", every=100, num_rows=64)

Uses the system's `heldout_tokens(num)` (its validation text as token rows) and
`score_tokens(rows) -> (sum of NLL, tokens)`; scores in batches of `batch_size` rows.
"""

from __future__ import annotations

import math


class Evaluator:
  def __init__(self, every: int = 0, num_rows: int = 64, batch_size: int = 16):
    if num_rows < 1 or batch_size < 1:
      raise ValueError(f"perplexity evaluator: num_rows={num_rows} and batch_size={batch_size} must be >= 1")
    self.every, self.num_rows, self.batch_size = every, num_rows, batch_size

  def run(self, predict_fns, step):
    for needed in ("heldout_tokens", "score_tokens"):
      if needed not in predict_fns:
        raise ValueError(
          f"perplexity evaluator needs predict function {needed!r}; this system has {sorted(predict_fns)}"
        )
    rows = predict_fns["heldout_tokens"](self.num_rows)
    total = count = 0.0
    for start in range(0, len(rows), self.batch_size):
      t, c = predict_fns["score_tokens"](rows[start : start + self.batch_size])
      total, count = total + t, count + c
    ce = total / max(count, 1.0)
    return {"ce": ce, "perplexity": math.exp(min(ce, 80.0)), "tokens": count}
