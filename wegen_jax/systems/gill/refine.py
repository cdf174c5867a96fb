"""MGCC's Cross-Modal Refinement Module (arXiv 2405.18304; the paper gives no sizes: our design).

The [IMG] tokens' LLM states (queries) cross-attend to the multimodal context's states (keys and
values: the caption tokens and the images' visual tokens before them) in the LLM's own
embedding space, so the features both heads read carry the text-image dependencies of the
whole context, not only what the causal LLM packed into 8 positions. Why these choices:
- width = the LLM hidden size: the module works where the paper says (the LLM embedding
  space) and its output replaces the [IMG] states with no projection in between;
- heads = config.refine_heads (head width 128 at OPT-6.7B with 32, as OPT's own attention);
- feed-forward width = the hidden size (not 4x): at 4096 one layer is ~100M parameters,
  the size of GILL's other trained parts, not a second LLM block;
- tanh gates initialised at 0 (GLIGEN's trick): at initialisation the module is the identity,
  so GILL's released weights give GILL's outputs and MGCC trains only what it improves.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from wegen_jax.layers import Attention, LayerNorm, MLP


class RefinementLayer(nnx.Module):
  def __init__(self, width: int, heads: int, *, kw):
    self.norm_q = LayerNorm(width, eps=1e-5, **kw)
    self.norm_kv = LayerNorm(width, eps=1e-5, **kw)
    self.attn = Attention(width, heads, width // heads, qkv_bias=True, out_bias=True, **kw)
    self.norm_ff = LayerNorm(width, eps=1e-5, **kw)
    self.mlp = MLP(width, width, act="gelu", **kw)
    self.gate_attn = nnx.Param(jnp.zeros((), kw["param_dtype"]), logical_axes=())
    self.gate_ff = nnx.Param(jnp.zeros((), kw["param_dtype"]), logical_axes=())

  def __call__(self, x, context, context_mask):
    ones = jnp.ones(x.shape[:2], jnp.int32)
    a = self.attn(
      self.norm_q(x), self.norm_kv(context), q_segment_ids=ones, kv_segment_ids=context_mask.astype(jnp.int32)
    )
    x = x + jnp.tanh(self.gate_attn[...]).astype(x.dtype) * a
    return x + jnp.tanh(self.gate_ff[...]).astype(x.dtype) * self.mlp(self.norm_ff(x))


class CrossModalRefinement(nnx.Module):
  def __init__(self, width: int, heads: int, num_layers: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.layers = nnx.List([RefinementLayer(width, heads, kw=kw) for _ in range(num_layers)])

  def __call__(self, img_states, context, context_mask):
    """img_states [B, 8, E]; context [B, T, E] LLM states; context_mask [B, T] (1 = a context position)."""
    for layer in self.layers:
      img_states = layer(img_states, context, context_mask)
    return img_states
