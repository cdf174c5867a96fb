"""Identical blocks applied in order as one `lax.scan` over their stacked parameters.

Unrolled, every layer of a 7B model is its own copy in the compiled program: compiling
WeGen-7B's train step for a TPU slice took 25-60 minutes and > 11 GB of host memory. Scanned,
the compiler sees one body per stack (MaxText's `scan_layers`). Parameters stay stored per
layer, so checkpoints and the converters do not change; the stack is built inside the step,
which costs one extra copy of the scanned parameters' local shards (and of their gradients).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def scan_blocks(
  blocks: Sequence[nnx.Module], x, call: Callable = lambda block, h: block(h), *, remat_policy=None, remat: bool = False
):
  """x = call(block, x) for each block in order, compiled as one scanned body.

  The blocks must be the same module structure (same class, static fields and parameter
  shapes); they must not write state (no batch statistics or caches). `remat` wraps the body in
  `jax.checkpoint` with `remat_policy`, as rematerialising each unrolled block would."""
  graphdef, first = nnx.split(blocks[0])
  states = [first]
  for i, block in enumerate(blocks[1:], 1):
    g, state = nnx.split(block)
    if g != graphdef:
      raise ValueError(
        f"scan_blocks: block {i} ({type(block).__name__}) differs in structure from "
        "block 0; scanned layers must be identical (turn scan_layers off for this model)"
      )
    states.append(state)
  stacked = jax.tree.map(lambda *v: jnp.stack(v), *states)

  def body(h, state):
    return call(nnx.merge(graphdef, state), h), None

  if remat:
    body = jax.checkpoint(body, policy=remat_policy, prevent_cse=False)
  x, _ = jax.lax.scan(body, x, stacked)
  return x
