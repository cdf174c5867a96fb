"""attention_impl "auto"/"flash": platform/shape choices, the query-chunked reference for large
scores, the shard_map path on 8 virtual CPU devices, and an LLM whose logits and gradients with "flash" equal those with "xla"."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wegen_jax.kernels import BlockSizes, register_variant
from wegen_jax.kernels import dispatch
from wegen_jax.kernels.dispatch import choose, chunked_reference
from wegen_jax.layers.attention import dot_product_attention, get_attention
from wegen_jax.models import LLM, LLMConfig
from wegen_jax.parallel import activation_sharding, make_mesh


def inputs(b, t, s, h, kh, d, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  shapes = ((b, t, h, d), (b, s, kh, d), (b, s, kh, d))
  return tuple(jax.random.normal(key, shape) for key, shape in zip(keys, shapes))


@pytest.mark.parametrize(
  "mode,platform,t,d,dtype,want",
  [
    ("auto", "cpu", 4096, 128, jnp.bfloat16, ("xla", False)),
    ("flash", "cpu", 64, 64, jnp.float32, ("tpu", True)),
    ("auto", "gpu", 4096, 128, jnp.bfloat16, ("gpu", False)),
    ("auto", "tpu", 2048, 128, jnp.bfloat16, ("tpu", False)),
    ("auto", "gpu", 1, 128, jnp.bfloat16, ("xla", False)),  # decode
    ("auto", "tpu", 256, 128, jnp.bfloat16, ("xla", False)),  # short
    ("auto", "gpu", 4096, 80, jnp.bfloat16, ("xla", False)),  # Triton needs power-of-two head_dim
    ("auto", "tpu", 4096, 80, jnp.bfloat16, ("tpu", False)),
    ("flash", "gpu", 64, 64, jnp.float64, ("xla", False)),  # dtype
    ("auto", "tpu", (4096, 77), 64, jnp.bfloat16, ("xla", False)),  # cross-attention: small scores
    ("flash", "tpu", (4096, 77), 64, jnp.bfloat16, ("tpu", False)),
    ("auto", "gpu", (512, 8192), 128, jnp.bfloat16, ("gpu", False)),  # chunked prefill, long cache
  ],
)
def test_choose(mode, platform, t, d, dtype, want):
  t, s = t if isinstance(t, tuple) else (t, t if t > 1 else 4096)
  choice = choose((2, t, 8, d), (2, s, 8, d), dtype, mode=mode, platform=platform)
  assert (choice.kernel, choice.interpret) == want, choice.reason


def test_auto_on_cpu_is_the_reference_and_flash_runs_in_interpret_mode():
  q, k, v = inputs(2, 40, 40, 4, 2, 16)
  kw = dict(causal=True, q_offset=0, q_segment_ids=None, kv_segment_ids=None, scale=None)
  want = dot_product_attention(q, k, v, **kw)
  np.testing.assert_array_equal(get_attention("auto")(q, k, v, **kw), want)
  flash = jax.jit(lambda q, k, v: get_attention("flash")(q, k, v, **kw))
  np.testing.assert_allclose(flash(q, k, v), want, atol=1e-5)
  with pytest.raises(ValueError, match="'auto' or 'flash'"):
    choose(q.shape, k.shape, q.dtype, mode="fast")


def test_shard_map_path_equals_unsharded():
  assert jax.device_count() >= 8, "tests/conftest.py should force 8 host devices"
  register_variant("flash_test16", BlockSizes(16, 16))
  attend = get_attention("flash_test16")
  q, k, v = inputs(4, 32, 32, 4, 2, 16)
  seg = jnp.asarray([[1] * 20 + [2] * 10 + [0] * 2] * 4, jnp.int32)
  kw = dict(causal=True, q_offset=jnp.asarray([0, 3, 5, 7]), q_segment_ids=seg, kv_segment_ids=seg)

  def make_run():  # a fresh function per trace: jit's cache does not see the sharding context
    def run(q, k, v):
      o, vjp = jax.vjp(lambda q, k, v: attend(q, k, v, **kw), q, k, v)
      return (o,) + vjp(jnp.cos(o))

    return run

  # Unsharded result: the XLA reference (the kernel itself equals it, see test_kernels.py).
  def reference(q, k, v):
    o, vjp = jax.vjp(lambda q, k, v: dot_product_attention(q, k, v, **kw), q, k, v)
    return (o,) + vjp(jnp.cos(o))

  want = jax.jit(reference)(q, k, v)
  mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  with activation_sharding(mesh):
    lowered = jax.jit(make_run()).lower(q, k, v)
    got = lowered.compile()(q, k, v)
  assert "shard_map" in lowered.as_text() or "sdy.manual_computation" in lowered.as_text()
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_llm_flash_matches_xla_logits_and_grads():
  def build(impl):
    cfg = LLMConfig(
      family="llama",
      vocab_size=64,
      hidden_size=64,
      intermediate_size=96,
      num_layers=1,
      num_heads=4,
      num_kv_heads=2,
      attention_impl=impl,
    )
    return LLM(cfg, rngs=nnx.Rngs(0))

  ids = jnp.asarray(np.random.RandomState(0).randint(1, 64, (2, 24)))
  seg = jnp.asarray([[1] * 10 + [2] * 11 + [0] * 3, [1] * 24], jnp.int32)
  weight = (seg != 0)[..., None]

  def logits_and_grads(model):
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state):
      def loss(state):
        logits = nnx.merge(graphdef, state)(ids, segment_ids=seg)
        return jnp.mean(jnp.where(weight, jax.nn.log_softmax(logits), 0.0) ** 2), logits

      return jax.value_and_grad(loss, has_aux=True)(state)

    (_, logits), grads = step(state)
    return logits, grads

  logits, grads = logits_and_grads(build("flash"))
  ref_logits, ref_grads = logits_and_grads(build("xla"))
  np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
  flat, flat_ref = dict(nnx.to_flat_state(grads)), dict(nnx.to_flat_state(ref_grads))
  assert flat.keys() == flat_ref.keys()
  for path, g in flat.items():
    a, b = np.asarray(g.get_value()), np.asarray(flat_ref[path].get_value())
    assert np.abs(a - b).max() <= 1e-5 * max(np.abs(b).max(), 1.0), path


@pytest.mark.parametrize("causal,segments,gqa", [(False, False, 1), (True, True, 2), (True, False, 4)])
def test_chunked_reference_equals_the_reference_values_and_grads(causal, segments, gqa):
  q, k, v = inputs(2, 37, 37, 4, 4 // gqa, 8, seed=1)
  seg = jnp.asarray([[1] * 20 + [2] * 15 + [0] * 2, [1] * 37], jnp.int32) if segments else None
  kw = dict(causal=causal, q_offset=jnp.asarray([0, 3]) if not segments else 0, q_segment_ids=seg, kv_segment_ids=seg)

  def value_and_grads(fn):
    o, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, **kw), q, k, v)
    return (o,) + vjp(jnp.sin(o))

  want = value_and_grads(dot_product_attention)
  got = value_and_grads(lambda *a, **b: chunked_reference(*a, chunk=16, **b))  # 3 chunks, 11 rows padded
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_auto_chunks_large_scores_that_no_kernel_takes(monkeypatch):
  calls = []
  real = dispatch.chunked_reference
  monkeypatch.setattr(dispatch, "chunked_reference", lambda *a, **kw: calls.append(1) or real(*a, **kw))
  monkeypatch.setattr(dispatch, "CHUNKED_MIN_SCORES", 64 * 64)
  q, k, v = inputs(1, 64, 64, 1, 1, 16)
  np.testing.assert_allclose(get_attention("auto")(q, k, v), dot_product_attention(q, k, v), atol=1e-5)
  assert calls == [1]
  get_attention("auto")(q[:, :32], k, v)  # 32 x 64 scores: below the threshold, plain reference
  assert calls == [1]
