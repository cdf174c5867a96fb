"""The LLM alone: next-token training on a learnable synthetic corpus (`Task`)."""

from wegen_jax.systems.lm.task import LMTask as Task
