"""Jit-compiled autoregressive decoding with a fixed-shape KV cache.

Prompts are left-padded ([B, P] with an attention mask, HF convention); the cache holds
P + max_new_tokens slots, so the whole loop (prefill + `lax.while_loop`) compiles once per
shape. A `DecodeHook` can rewrite each step: force the next token and/or replace the next
input embedding. WeGen uses it to feed back input_proj(output_proj(h)) for the 64 image
positions; GILL uses it to force [IMG1..7] after [IMG0] (see ForcedTokensHook).

Models with their own prompt inputs (Qwen2.5-VL's images) prepare the prompt's input embeddings
and rope positions ([B, P], or [3, B, P] for M-RoPE) outside the loop; decoded tokens continue at
the prompt's largest position + 1 on every axis (transformers' rope_deltas).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wegen_jax.generation.sampling import SamplingConfig, sample_token


class DecodeHook(nnx.Module):
  """Base hook: changes nothing. Subclasses override `init` and `step`.

  step(state, token [B], hidden [B, E]) -> (token [B], embed [B, E], use_embed [B] bool, state)
  `hidden` is the last hidden state that produced `token`'s logits; where `use_embed` is
  True, `embed` replaces the token embedding as the next input.
  """

  def init(self, batch: int, hidden_size: int):
    return ()

  def step(self, state, token, hidden):
    return token, jnp.zeros_like(hidden), jnp.zeros(token.shape, bool), state


class ForcedTokensHook(DecodeHook):
  """After `trigger` is emitted, force `forced` tokens one per step; while forcing, the next
  input embedding is `embed_fn(hidden)` when an embed_fn (an nnx.Module) is given."""

  def __init__(self, trigger: int, forced, embed_fn: nnx.Module | None = None, feedback=None):
    """feedback: per forced token, whether its input is embed_fn(hidden) (default: all).
    WeGen forces <img_00000>..<img_00063> with feedback and then </img> without."""
    self.trigger = int(trigger)
    self.forced = tuple(int(t) for t in forced)
    self.embed_fn = embed_fn
    self.feedback = tuple(bool(f) for f in (feedback if feedback is not None else [True] * len(self.forced)))
    if len(self.feedback) != len(self.forced):
      raise ValueError(f"feedback has {len(self.feedback)} entries for {len(self.forced)} forced tokens")

  def init(self, batch, hidden_size):
    return jnp.full((batch,), -1, jnp.int32)  # index into `forced`, -1 = not forcing

  def step(self, state, token, hidden):
    forcing = state >= 0
    forced = jnp.asarray(self.forced, jnp.int32)[jnp.clip(state, 0, len(self.forced) - 1)]
    token = jnp.where(forcing, forced, token)
    feedback = jnp.asarray(self.feedback)[jnp.clip(state, 0, len(self.forced) - 1)]
    use_embed = forcing & feedback if self.embed_fn is not None else jnp.zeros_like(forcing)
    embed = self.embed_fn(hidden).astype(hidden.dtype) if self.embed_fn is not None else jnp.zeros_like(hidden)
    nxt = jnp.where(forcing, state + 1, jnp.where(token == self.trigger, 0, -1))
    nxt = jnp.where(nxt >= len(self.forced), -1, nxt)
    return token, embed, use_embed, nxt


class GenerateOutput(NamedTuple):
  tokens: jax.Array  # [B, N] generated ids, pad_token after a stop token
  hidden_states: jax.Array  # [B, N, E]: the hidden state whose logits chose tokens[:, i]
  lengths: jax.Array  # [B] tokens generated up to and including the stop token


def left_pad(rows, pad: int) -> tuple[np.ndarray, np.ndarray]:
  """Token rows of any lengths -> (ids, attention mask) [B, max len], padding before the tokens."""
  width = max(len(r) for r in rows)
  ids = np.full((len(rows), width), pad, np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
  return ids, mask


def _check_left_padded(mask: np.ndarray) -> None:
  started = np.cumsum(mask, axis=1) > 0
  if np.any(started & (mask == 0)):
    raise ValueError(
      "generate() needs left-padded prompts (padding before the tokens, as HF's tokenizer(padding_side='left') gives)"
    )
  if np.any(mask.sum(axis=1) == 0):
    raise ValueError("every prompt needs at least one token")


def generate(
  model,
  input_ids,
  *,
  attention_mask=None,
  sampling: SamplingConfig = SamplingConfig(),
  rng=None,
  hook: DecodeHook | None = None,
  inputs_embeds=None,
  positions=None,
  **model_inputs,
) -> GenerateOutput:
  """Decodes `sampling.max_new_tokens` tokens after left-padded prompts [B, P].

  inputs_embeds [B, P, E] / positions ([B, P] or [3, B, P]): the prompt's input embeddings and
  rope positions when not the plain token embeddings and 0.. over the mask. model_inputs (e.g.
  pixel_values=, image_grid_thw= for Qwen2_5_VL) go to `model.prepare_inputs(input_ids,
  attention_mask, **model_inputs)`, which returns both."""
  input_ids = jnp.asarray(input_ids, jnp.int32)
  mask = np.ones(input_ids.shape, np.int32) if attention_mask is None else np.asarray(attention_mask, np.int32)
  _check_left_padded(mask)
  if model_inputs:
    if not hasattr(model, "prepare_inputs"):
      raise ValueError(f"{type(model).__name__} takes no extra generate() inputs (got {sorted(model_inputs)})")
    embeds, pos = model.prepare_inputs(input_ids, attention_mask=mask, **model_inputs)
    inputs_embeds = embeds if inputs_embeds is None else inputs_embeds
    positions = pos if positions is None else positions
  if positions is None:
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  rng = jax.random.key(0) if rng is None else rng
  graphdef, state = nnx.split((model, hook or DecodeHook()))
  return _generate(graphdef, state, input_ids, jnp.asarray(mask), rng, sampling, inputs_embeds, jnp.asarray(positions))


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling"))
def _generate(
  graphdef, state, input_ids, mask, rng, sampling: SamplingConfig, inputs_embeds, positions
) -> GenerateOutput:
  model, hook = nnx.merge(graphdef, state)
  b, p = input_ids.shape
  n = sampling.max_new_tokens
  prompt = dict(inputs_embeds=inputs_embeds) if inputs_embeds is not None else dict(input_ids=input_ids)
  out = model.forward(**prompt, positions=positions, segment_ids=mask, cache=model.init_cache(b, p + n), cache_index=0)
  hidden = out.hidden_states[:, -1]
  stop = jnp.asarray(sampling.stop_tokens or (-1,), jnp.int32)

  def body(carry):
    step, cache, logits, hidden, pos, done, tokens, hiddens, lengths, rng, hook_state = carry
    rng, sub = jax.random.split(rng)
    token = sample_token(logits, sub, sampling)
    token, embed, use_embed, hook_state = hook.step(hook_state, token, hidden)
    token = jnp.where(done, sampling.pad_token, token)
    tokens = tokens.at[:, step].set(token)
    hiddens = hiddens.at[:, step].set(hidden)
    lengths = lengths + (~done).astype(jnp.int32)
    done = done | jnp.isin(token, stop)
    x = model.embed_tokens(token[:, None])
    x = jnp.where(use_embed[:, None, None], embed[:, None].astype(x.dtype), x)
    out = model.forward(
      inputs_embeds=x,
      positions=pos[:, None],
      segment_ids=jnp.ones((b, 1), jnp.int32),
      cache=cache,
      cache_index=p + step,
    )
    return (
      step + 1,
      out.cache,
      out.logits[:, 0],
      out.hidden_states[:, 0],
      pos + 1,
      done,
      tokens,
      hiddens,
      lengths,
      rng,
      hook_state,
    )

  def cond(carry):
    return (carry[0] < n) & ~jnp.all(carry[5])

  # the next position is one past the prompt's largest (over valid tokens and M-RoPE axes)
  last = jnp.max(jnp.where(mask.astype(bool), positions, -1), axis=-1)
  last = last if positions.ndim == 2 else jnp.max(last, axis=0)
  carry = (
    jnp.int32(0),
    out.cache,
    out.logits[:, -1],
    hidden,
    last + 1,
    jnp.zeros((b,), bool),
    jnp.full((b, n), sampling.pad_token, jnp.int32),
    jnp.zeros((b, n, hidden.shape[-1]), hidden.dtype),
    jnp.zeros((b,), jnp.int32),
    rng,
    hook.init(b, hidden.shape[-1]),
  )
  carry = jax.lax.while_loop(cond, body, carry)
  return GenerateOutput(carry[6], carry[7], carry[8])
