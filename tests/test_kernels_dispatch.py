"""attention_impl "auto"/"flash": platform/shape choices, the shard_map path on 8 virtual
CPU devices, and an LLM whose logits and gradients with "flash" equal those with "xla"."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wegen_jax.kernels import BlockSizes, register_variant
from wegen_jax.kernels.dispatch import choose
from wegen_jax.layers.attention import dot_product_attention, get_attention
from wegen_jax.models import LLM, LLMConfig
from wegen_jax.parallel import activation_sharding, make_mesh


def inputs(b, t, s, h, kh, d, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  shapes = ((b, t, h, d), (b, s, kh, d), (b, s, kh, d))
  return tuple(jax.random.normal(key, shape) for key, shape in zip(keys, shapes))


@pytest.mark.parametrize("mode,platform,t,d,dtype,want", [
    ("auto", "cpu", 4096, 128, jnp.bfloat16, ("xla", False)),
    ("flash", "cpu", 64, 64, jnp.float32, ("tpu", True)),
    ("auto", "gpu", 4096, 128, jnp.bfloat16, ("gpu", False)),
    ("auto", "tpu", 2048, 128, jnp.bfloat16, ("tpu", False)),
    ("auto", "gpu", 1, 128, jnp.bfloat16, ("xla", False)),       # decode
    ("auto", "tpu", 256, 128, jnp.bfloat16, ("xla", False)),     # short
    ("auto", "gpu", 4096, 80, jnp.bfloat16, ("xla", False)),     # Triton needs power-of-two head_dim
    ("auto", "tpu", 4096, 80, jnp.bfloat16, ("tpu", False)),
    ("flash", "gpu", 64, 64, jnp.float64, ("xla", False)),       # dtype
])
def test_choose(mode, platform, t, d, dtype, want):
  choice = choose((2, t, 8, d), (2, t if t > 1 else 4096, 8, d), dtype, mode=mode, platform=platform)
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

  def make_run():   # a fresh function per trace: jit's cache does not see the sharding context
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
    cfg = LLMConfig(family="llama", vocab_size=64, hidden_size=64, intermediate_size=96, num_layers=1,
                    num_heads=4, num_kv_heads=2, attention_impl=impl)
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
