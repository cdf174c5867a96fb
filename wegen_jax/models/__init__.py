"""Backbones: the LLM family, vision towers, UNet, VAE (and their presets, models/presets.py)."""

from wegen_jax.models.llm import LLM, LLMConfig, LLMOutput
