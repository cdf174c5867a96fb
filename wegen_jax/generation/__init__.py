"""Autoregressive decoding: sampling rules, the KV-cache loop, and step hooks."""

from wegen_jax.generation.decode import DecodeHook, ForcedTokensHook, GenerateOutput, generate
from wegen_jax.generation.sampling import SamplingConfig, filter_logits, sample_token
