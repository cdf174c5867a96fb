"""Autoregressive decoding: sampling rules, the KV-cache loop, and step hooks."""

from wegen_jax.generation.decode import DecodeHook, ForcedTokensHook, GenerateOutput, generate, left_pad
from wegen_jax.generation.sampling import SamplingConfig, filter_logits, sample_token
