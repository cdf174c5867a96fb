"""Training: losses, (later) train state, steps, optimisers, checkpointing, metrics."""

from wegen_jax.training.losses import IGNORE_INDEX, cross_entropy, next_token_labels
