"""Evaluators named by `config.evals.<name>.type` (see wegen_jax/training/evals.py).

TYPES lists the built-in ones (a module here with an `Evaluator` class each; docs/EVAL.md has
their protocols); a lab's own evaluator is named by its full dotted module path instead.
"""

TYPES = {
  "dynamics": "instruction-following on held-out video-dynamics pairs (synthetic ground truth)",
  "reconstruction": "detokenizer fidelity: held-out frames redrawn from their own features",
  "validation_loss": "the task's own training losses on held-out batches",
  "perplexity": "held-out next-token cross-entropy and perplexity",
  "fid": "FID against a reference set (clean-fid protocol, FID Inception pool3)",
  "clip_t": "CLIP image-text cosine of generated images and their prompts",
  "clip_i": "CLIP image-image cosine of generated and ground-truth images (GILL's VIST / VisDial)",
  "geneval_synthetic": "GenEval-style colour / two objects / count / position checks, scored exactly",
}


def require_predict_fns(predict_fns, names, evaluator: str) -> None:
  """Raises naming the first of `names` the system's predict functions lack."""
  for needed in names:
    if needed not in predict_fns:
      raise ValueError(
        f"{evaluator} evaluator needs predict function {needed!r}; this system has {sorted(predict_fns)}"
      )
