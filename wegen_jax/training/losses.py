"""Token-level losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100  # HF / SEED-X convention for unsupervised positions


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX):
  """Mean next-token CE over supervised positions. logits [B, T, V] predict labels [B, T]
  (already aligned: shift before calling). Returns (loss, number of supervised tokens)."""
  valid = labels != ignore_index
  logits = logits.astype(jnp.float32)
  # nll = logsumexp - the label's logit, the label's logit picked by a compare-and-select over the
  # vocabulary rather than a gather: XLA fuses that (and its gradient, a select instead of a
  # scatter) into the softmax passes, so no [B, T, V] log-probabilities or one-hot are written.
  hit = jnp.arange(logits.shape[-1]) == jnp.where(valid, labels, 0)[..., None]
  nll = jax.nn.logsumexp(logits, axis=-1) - jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)
  count = valid.sum()
  return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(count, 1), count


def next_token_labels(input_ids: jax.Array, loss_mask: jax.Array | None = None) -> jax.Array:
  """labels[t] = input_ids[t+1] (last position ignored); loss_mask [B, T] marks targets kept."""
  labels = jnp.concatenate([input_ids[:, 1:], jnp.full_like(input_ids[:, :1], IGNORE_INDEX)], axis=1)
  if loss_mask is not None:
    keep = jnp.concatenate([loss_mask[:, 1:], jnp.zeros_like(loss_mask[:, :1])], axis=1)
    labels = jnp.where(keep.astype(bool), labels, IGNORE_INDEX)
  return labels
