"""The LLM's optional short causal convolution (layers/short_conv.py): the formula, causality,
packed segments, KV-cache decoding, the export refusal, and the lookup it is there for."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from wegen_jax.convert.checkpoint_io import CheckpointError
from wegen_jax.convert.hf_llm import save_hf_llm
from wegen_jax.layers.short_conv import ShortConv
from wegen_jax.models.llm import LLM, LLMConfig
from wegen_jax.models.presets import LLM_PRESETS


def tiny(**kw) -> LLMConfig:
  return LLMConfig(**{**LLM_PRESETS["tiny_qwen"], "vocab_size": 64, "short_conv": 3, **kw})


def test_matches_a_depthwise_causal_convolution_and_keeps_segments_apart():
  conv = ShortConv(5, 3, rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).normal(size=(2, 7, 5)).astype(np.float32)
  w = np.asarray(conv.weight[...])
  seg = np.array([[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 2, 2]])
  out = np.asarray(conv(jnp.asarray(x), jnp.asarray(seg))[0])
  want = x.copy()
  for b in range(2):
    for t in range(7):
      for j in range(3):
        if t - j >= 0 and seg[b, t - j] == seg[b, t]:
          want[b, t] += w[j] * x[b, t - j]
  np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
  # nothing flows from a later position or from another packed example
  grad = jax.grad(lambda v: conv(v, jnp.asarray(seg))[0][1, 5].sum())(jnp.asarray(x))
  assert np.abs(np.asarray(grad)[1, :5]).sum() == 0 and np.abs(np.asarray(grad)[1, 6:]).sum() == 0


def test_cached_decoding_gives_the_full_forward_logits():
  model = LLM(tiny(), rngs=nnx.Rngs(1))
  ids = jnp.asarray(np.random.default_rng(1).integers(1, 64, (2, 9)))
  # row 1 is left-padded: padding (segment 0) must not leak into its tokens
  seg = jnp.asarray([[1] * 9, [0, 0, 0] + [1] * 6])
  full = model.forward(ids, segment_ids=seg).logits
  cache = model.init_cache(2, 16)
  prefill = model.forward(ids[:, :5], segment_ids=seg[:, :5], cache=cache, cache_index=0)
  logits, cache = [prefill.logits], prefill.cache
  for t in range(5, 9):
    out = model.forward(ids[:, t : t + 1], segment_ids=seg[:, t : t + 1], cache=cache, cache_index=t)
    logits.append(out.logits)
    cache = out.cache
  got = jnp.concatenate(logits, axis=1)
  real = np.asarray(seg) > 0
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(full)[real], atol=1e-5)


def test_export_to_hf_names_the_reason(tmp_path):
  with pytest.raises(CheckpointError, match="short_conv=3.*Orbax"):
    save_hf_llm(LLM(tiny(), rngs=nnx.Rngs(0)), tmp_path / "hf")


def test_it_learns_associative_recall_where_attention_alone_plateaus():
  """Four key-value pairs, then a key: answer its value. A randomly initialised 2-layer LLM
  sits near chance for thousands of steps (docs/GOT.md); with the conv it answers within a few
  hundred, because a value's key sits one position back, inside its conv window."""
  pairs, batch, steps = 4, 32, 300
  model = LLM(tiny(), rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adam(optax.warmup_cosine_decay_schedule(0, 3e-3, 30, steps)), wrt=nnx.Param)
  rng = np.random.default_rng(0)

  def batch_of_sequences():
    keys = np.stack([rng.choice(32, pairs, replace=False) for _ in range(batch)])
    vals = rng.integers(32, 64, (batch, pairs))
    order = np.stack([rng.permutation(pairs) for _ in range(batch)])
    seq = np.zeros((batch, 4 * pairs), np.int32)
    seq[:, 0 : 2 * pairs : 2], seq[:, 1 : 2 * pairs : 2] = keys, vals
    seq[:, 2 * pairs :: 2] = np.take_along_axis(keys, order, 1)
    seq[:, 2 * pairs + 1 :: 2] = np.take_along_axis(vals, order, 1)
    return jnp.asarray(seq)

  @nnx.jit
  def step(model, opt, seq):
    def loss_fn(m):
      ce = optax.softmax_cross_entropy_with_integer_labels(m(seq)[:, 2 * pairs : -1 : 2], seq[:, 2 * pairs + 1 :: 2])
      return ce.mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  losses = [float(step(model, opt, batch_of_sequences())) for _ in range(steps)]
  # chance: ln(32) = 3.47; answering with some value of the context: ln(4) = 1.39
  assert np.mean(losses[-20:]) < 0.3, losses[-20:]


def test_sharded_scanned_loss_and_grads_match_one_device():
  """A 2x2x2 mesh with scanned, rematerialised layers gives the single-device loss and grads."""
  from sharding_harness import rel_err

  from wegen_jax.parallel import activation_sharding, make_mesh, shard_module
  from wegen_jax.training import cross_entropy, next_token_labels

  ids = jnp.asarray(np.random.default_rng(2).integers(0, 64, (8, 16)))
  seg = jnp.asarray(np.repeat([[1] * 10 + [2] * 6], 8, axis=0))  # two packed examples per row

  def loss_and_grads(model, batch, mesh=None):
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, ids):
      loss_fn = lambda s: cross_entropy(nnx.merge(graphdef, s)(ids, segment_ids=seg), next_token_labels(ids))[0]
      return jax.value_and_grad(loss_fn)(state)

    if mesh is None:
      return step(state, batch)
    with activation_sharding(mesh):
      return step(state, batch)

  ref_loss, ref_grads = loss_and_grads(LLM(tiny(), rngs=nnx.Rngs(3)), ids)
  mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  model = shard_module(LLM(tiny(scan_layers=True, remat="full"), rngs=nnx.Rngs(3)), mesh)
  batch = jax.device_put(ids, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"))))
  loss, grads = loss_and_grads(model, batch, mesh)
  assert rel_err(loss, ref_loss) <= 1e-5
  flat_ref = dict(nnx.to_flat_state(ref_grads))
  for path, g in nnx.to_flat_state(grads):
    assert rel_err(g.get_value(), flat_ref[path].get_value()) <= 1e-5, path
  assert any("short_conv" in str(p) for p in flat_ref)
