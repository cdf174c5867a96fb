"""Next-token selection: greedy, temperature, top-k and top-p (HF's order and semantics)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 32
  temperature: float = 0.0  # 0: greedy
  top_k: int = 0  # 0: off
  top_p: float = 1.0  # 1: off
  stop_tokens: tuple[int, ...] = ()
  pad_token: int = 0  # written after a sequence stopped

  @property
  def greedy(self) -> bool:
    return self.temperature <= 0.0


def filter_logits(logits: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """Temperature, then top-k, then top-p; removed entries become -inf."""
  logits = logits.astype(jnp.float32) / cfg.temperature
  neg_inf = jnp.finfo(jnp.float32).min
  if cfg.top_k > 0:
    kth = jax.lax.top_k(logits, min(cfg.top_k, logits.shape[-1]))[0][..., -1:]
    logits = jnp.where(logits < kth, neg_inf, logits)
  if cfg.top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # keep while the mass before is < top_p
    keep_sorted = mass_before < cfg.top_p
    keep_sorted = keep_sorted.at[..., 0].set(True)
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    logits = jnp.where(keep, logits, neg_inf)
  return logits


def sample_token(logits: jax.Array, rng: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """logits [B, V] -> token ids [B] (int32)."""
  if cfg.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, filter_logits(logits, cfg), axis=-1).astype(jnp.int32)
