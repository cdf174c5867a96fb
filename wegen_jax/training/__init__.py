"""Training: the shared trainer, the Task interface, losses, optimizer, checkpointing, metrics, evaluator hooks."""

from wegen_jax.training.losses import IGNORE_INDEX, cross_entropy, next_token_labels
