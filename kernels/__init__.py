"""Pallas attention kernels (installed as `wegen_jax.kernels`).

Importing this package registers attention_impl "flash" and "auto" with
wegen_jax.layers.attention; Pallas itself loads on the first call (kernels/dispatch.py).
Custom block sizes: `register_variant("flash_big", BlockSizes(1024, 512))`.
"""

from __future__ import annotations

from wegen_jax.kernels.common import BlockSizes
from wegen_jax.layers.attention import register_attention


def _lazy(mode: str, **settings):
  def attention(q, k, v, **kwargs):
    from wegen_jax.kernels.dispatch import attention as dispatch

    return dispatch(q, k, v, mode=mode, **settings, **kwargs)

  attention.__name__ = f"{mode}_attention"
  return attention


def register_variant(
  name: str, block_sizes: BlockSizes | None = None, *, mode: str = "flash", backend: str | None = None
) -> None:
  """Registers attention_impl `name`: dispatch `mode` with fixed block sizes / kernel family."""
  register_attention(name, _lazy(mode, block_sizes=block_sizes, backend=backend))


register_variant("flash", mode="flash")
register_variant("auto", mode="auto")
