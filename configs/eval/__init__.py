"""Evaluation configs: `python -m wegen_jax.eval --config configs/eval/<name>.py ...`."""
