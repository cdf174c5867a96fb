"""The LLM alone: next-token training on a learnable synthetic corpus (`Task`), and its `System`
(export to an HF folder and import back)."""

from wegen_jax.systems.lm.system import LMSystem as System
from wegen_jax.systems.lm.task import LMTask as Task
