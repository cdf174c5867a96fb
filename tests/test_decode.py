"""KV-cache decoding vs full recomputation, sampling filters vs HF, and decode hooks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wegen_jax.generation import ForcedTokensHook, SamplingConfig, filter_logits, generate
from wegen_jax.layers import Dense
from wegen_jax.models import LLM, LLMConfig


def tiny(family="llama", **kw):
  base = dict(
    family=family, vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2
  )
  if family == "opt":
    base.update(
      norm="layer",
      norm_bias=True,
      activation="relu",
      gated_mlp=False,
      qkv_bias=True,
      out_bias=True,
      mlp_bias=True,
      position_embedding="learned",
      max_position_embeddings=64,
      num_kv_heads=None,
      tie_word_embeddings=True,
    )
  base.update(kw)
  return LLM(LLMConfig(**base), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_cached_decoding_equals_full_recompute(family):
  model = tiny(family)
  ids = np.random.RandomState(0).randint(1, 64, (2, 6))
  mask = np.ones_like(ids)
  mask[0, :2] = 0
  out = generate(
    model, ids, attention_mask=mask, rng=jax.random.key(3), sampling=SamplingConfig(max_new_tokens=10, temperature=1.0)
  )
  tokens = np.asarray(out.tokens)
  full_ids = np.concatenate([ids, tokens], axis=1)
  full_mask = np.concatenate([mask, np.ones_like(tokens)], axis=1)
  positions = np.maximum(np.cumsum(full_mask, axis=1) - 1, 0)
  full = model.forward(jnp.asarray(full_ids), positions=jnp.asarray(positions), segment_ids=jnp.asarray(full_mask))
  # the hidden state that chose token i is the full model's state at position P - 1 + i
  expected = np.asarray(full.hidden_states)[:, ids.shape[1] - 1 : -1]
  np.testing.assert_allclose(np.asarray(out.hidden_states), expected, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(out.lengths), [10, 10])


def test_stop_tokens_pad_the_rest():
  model = tiny()
  ids = np.random.RandomState(1).randint(1, 64, (1, 5))
  free = np.asarray(generate(model, ids, sampling=SamplingConfig(max_new_tokens=8)).tokens)[0]
  stop = int(free[2])
  first = int(np.argmax(free == stop))
  out = generate(model, ids, sampling=SamplingConfig(max_new_tokens=8, stop_tokens=(stop,), pad_token=63))
  got = np.asarray(out.tokens)[0]
  np.testing.assert_array_equal(got[: first + 1], free[: first + 1])
  assert (got[first + 1 :] == 63).all() and int(out.lengths[0]) == first + 1


def test_sampling_filters_match_hf():
  torch = pytest.importorskip("torch")
  from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

  logits = np.random.RandomState(0).randn(4, 50).astype(np.float32) * 3
  cfg = SamplingConfig(temperature=0.7, top_k=20, top_p=0.8)
  ref = torch.tensor(logits)
  for warper in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(20), TopPLogitsWarper(0.8)):
    ref = warper(None, ref)
  ours = np.asarray(filter_logits(jnp.asarray(logits), cfg))
  np.testing.assert_array_equal(np.isfinite(ref.numpy()), ours > -1e30)
  kept = ours > -1e30
  np.testing.assert_allclose(ours[kept], ref.numpy()[kept], rtol=1e-6)


def test_sampling_is_deterministic_per_key_and_varies_across_keys():
  model = tiny()
  ids = np.random.RandomState(2).randint(1, 64, (2, 4))
  cfg = SamplingConfig(max_new_tokens=12, temperature=1.5, top_k=30, top_p=0.95)
  a = np.asarray(generate(model, ids, sampling=cfg, rng=jax.random.key(1)).tokens)
  b = np.asarray(generate(model, ids, sampling=cfg, rng=jax.random.key(1)).tokens)
  c = np.asarray(generate(model, ids, sampling=cfg, rng=jax.random.key(2)).tokens)
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()


def test_forced_tokens_hook_forces_and_feeds_back_embeddings():
  """WeGen/GILL pattern: after `trigger`, force a token run, feeding f(h) as the next input."""
  model = tiny()
  ids = np.random.RandomState(3).randint(1, 64, (1, 5))
  trigger = int(np.asarray(generate(model, ids, sampling=SamplingConfig(max_new_tokens=1)).tokens)[0, 0])
  forced = (60, 61, 62)
  feedback = Dense(32, 32, axes=("embed", "embed"), rngs=nnx.Rngs(5))
  hook = ForcedTokensHook(trigger, forced + (59,), embed_fn=feedback, feedback=(True, True, True, False))
  out = generate(model, ids, sampling=SamplingConfig(max_new_tokens=7), hook=hook)
  tokens = np.asarray(out.tokens)[0]
  assert tokens[0] == trigger and tuple(tokens[1:5]) == forced + (59,)
  # Recompute by hand: the inputs after the trigger are feedback(h_prev), not token embeddings.
  embeds = model.embed_tokens(jnp.asarray(np.concatenate([ids[0], tokens[:1]])[None]))
  h = model.forward(inputs_embeds=embeds).hidden_states[:, -1]
  for i in range(3):
    np.testing.assert_allclose(np.asarray(out.hidden_states[0, 1 + i]), np.asarray(h[0]), atol=1e-5)
    embeds = jnp.concatenate([embeds, feedback(h)[:, None]], axis=1)
    h = model.forward(inputs_embeds=embeds).hidden_states[:, -1]
  # the last forced token (59) goes in as its own embedding, not as feedback
  embeds = jnp.concatenate([embeds, model.embed_tokens(jnp.asarray([[59]]))], axis=1)
  h = model.forward(inputs_embeds=embeds).hidden_states[:, -1]
  np.testing.assert_allclose(np.asarray(out.hidden_states[0, 5]), np.asarray(h[0]), atol=1e-5)


def test_rejects_right_padding():
  model = tiny()
  with pytest.raises(ValueError, match="left-padded"):
    generate(model, np.ones((1, 4), np.int32), attention_mask=np.array([[1, 1, 0, 0]]))


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_packed_sequences_equal_separate_runs(family):
  """Segment ids + per-segment positions: packing two sequences changes nothing."""
  model = tiny(family)
  a = np.random.RandomState(4).randint(1, 64, (1, 5))
  b = np.random.RandomState(5).randint(1, 64, (1, 7))
  packed = jnp.asarray(np.concatenate([a, b, np.zeros((1, 3), int)], axis=1))
  segments = jnp.asarray([[1] * 5 + [2] * 7 + [0] * 3])
  positions = jnp.asarray([list(range(5)) + list(range(7)) + [0] * 3])
  logits = np.asarray(model(packed, positions=positions, segment_ids=segments))
  np.testing.assert_allclose(logits[:, :5], np.asarray(model(jnp.asarray(a))), atol=1e-5)
  np.testing.assert_allclose(logits[:, 5:12], np.asarray(model(jnp.asarray(b))), atol=1e-5)


def test_inputs_embeds_equal_input_ids():
  model = tiny("opt", word_embed_proj_dim=16)
  ids = jnp.asarray(np.random.RandomState(6).randint(1, 64, (2, 6)))
  np.testing.assert_allclose(
    np.asarray(model(None, inputs_embeds=model.embed_tokens(ids))), np.asarray(model(ids)), atol=1e-6
  )
