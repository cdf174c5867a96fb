"""A short causal depthwise convolution over time, added residually (x + conv(x)).

Each position sees itself and the `kernel - 1` positions before it in its own segment. Before
attention this puts a token's predecessors into its key, so matching "the token after X" (an
induction head) or "the value next to this key" (associative recall) needs one attention layer
instead of two layers that must first learn a previous-token head. A randomly initialised tiny LLM
learns that lookup thousands of steps earlier with it (docs/GOT.md: associative recall); the
authors' pretrained models do not have it, so it is an option for the tiny stand-ins only.
(Allen-Zhu's "Canon layers" and H3/Based's short convolutions are the same idea.)

Decoding keeps the last `kernel - 1` inputs and their segment ids in the layer's cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wegen_jax.layers.linear import param


class ShortConv(nnx.Module):
  def __init__(self, features: int, kernel: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if kernel < 2:
      raise ValueError(f"short conv kernel={kernel}; use >= 2 (or 0 to turn the layer off)")
    bound = kernel**-0.5  # PyTorch's Conv1d default for a depthwise kernel (fan_in = kernel)
    init = lambda key, shape, dt: jax.random.uniform(key, shape, dt, -bound, bound)
    # weight[j] multiplies the input j steps back.
    self.weight = param(rngs, init, (kernel, features), param_dtype, (None, "embed"))
    self.kernel = kernel
    self.dtype = dtype

  def init_state(self, batch: int, dtype) -> dict:
    k, d = self.weight.shape
    return {"x": jnp.zeros((batch, k - 1, d), dtype), "segment_ids": jnp.zeros((batch, k - 1), jnp.int32)}

  def __call__(self, x: jax.Array, segment_ids=None, state=None):
    """x [B, T, D]; segment_ids [B, T] (0 = padding) keep packed examples apart.
    With `state` (decoding), the previous inputs are prepended and the new state returned."""
    b, t, _ = x.shape
    dtype = self.dtype or x.dtype
    seg = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    past = self.kernel - 1
    if state is None:
      xs = jnp.pad(x, ((0, 0), (past, 0), (0, 0)))
      segs = jnp.pad(seg, ((0, 0), (past, 0)), constant_values=-1)
    else:
      xs = jnp.concatenate([state["x"].astype(x.dtype), x], axis=1)
      segs = jnp.concatenate([state["segment_ids"], seg], axis=1)
    w = self.weight[...].astype(dtype)
    out = x.astype(dtype)
    for j in range(self.kernel):
      shifted = jax.lax.dynamic_slice_in_dim(xs, past - j, t, axis=1).astype(dtype)
      same = jax.lax.dynamic_slice_in_dim(segs, past - j, t, axis=1) == seg
      out = out + jnp.where(same[..., None], shifted * w[j], 0)
    new_state = None
    if state is not None:
      new_state = {"x": xs[:, -past:].astype(state["x"].dtype), "segment_ids": segs[:, -past:]}
    return out.astype(x.dtype), new_state
