"""Shared building blocks (NNX): one place each for dense, norms, rotary, attention, MLPs."""

from wegen_jax.layers.attention import (
  Attention,
  attention_mask,
  dot_product_attention,
  get_attention,
  register_attention,
)
from wegen_jax.layers.linear import Dense, Embed, param
from wegen_jax.layers.mlp import MLP, GatedMLP, activation
from wegen_jax.layers.norms import LayerNorm, RMSNorm
from wegen_jax.layers.rotary import RopeConfig, apply_rotary, cos_sin, inverse_frequencies
from wegen_jax.layers.conv import Conv2d, GroupNorm
from wegen_jax.layers.timestep import TimestepEmbedding, timestep_features
from wegen_jax.layers.blocked_attention import blocked_attention
