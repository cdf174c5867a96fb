"""Backbones: the LLM family (and, in later modules, vision towers, UNet, VAE)."""

from wegen_jax.models.llm import LLM, LLMConfig, LLMOutput
