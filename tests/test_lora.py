"""LoRA (layers/lora.py): a fresh wrap computes the base, merge equals the unmerged forward, unmerge
restores the base kernels, dropout acts only under lora_dropout, and only A/B are new parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wegen_jax.layers.lora import LoRADense, apply_lora, lora_dropout, lora_layers, merge_lora
from wegen_jax.models.llm import LLM, LLMConfig
from wegen_jax.models.presets import LLM_PRESETS

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


def _model(**overrides):
  return LLM(LLMConfig(**dict(LLM_PRESETS["tiny_qwen"], **overrides)), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def ids():
  return jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 12)), jnp.int32)


def _randomise_b(model):
  for i, layer in enumerate(lora_layers(model)):
    layer.lora_b.set_value(0.05 * jax.random.normal(jax.random.key(i), layer.lora_b.shape))


def test_zero_b_is_the_base_and_only_a_b_are_new(ids):
  model = _model()
  want = np.asarray(model(ids))
  n_before = len(jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert apply_lora(model, TARGETS, rank=4, alpha=4, dropout=0.05, rngs=nnx.Rngs(1)) == 2 * 7
  np.testing.assert_array_equal(np.asarray(model(ids)), want)
  paths = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
  assert len(paths) == n_before + 2 * 14
  assert all(p.endswith(("lora_a", "lora_b")) for p in paths if ".base." not in p and "lora" in p)
  assert any(p.endswith("attn.q.base.kernel") for p in paths)
  with pytest.raises(ValueError, match="no Dense layer"):
    apply_lora(_model(), ("nope",), rank=2, alpha=2, dropout=0.0, rngs=nnx.Rngs(0))


def test_merge_equals_unmerged_forward_and_unmerge_restores(ids):
  model = _model()
  base_kernel = np.asarray(model.layers[0].attn.q.kernel[...])
  apply_lora(model, TARGETS, rank=4, alpha=8, dropout=0.05, rngs=nnx.Rngs(1))
  _randomise_b(model)
  unmerged = np.asarray(model(ids))
  assert np.abs(unmerged - np.asarray(_model()(ids))).max() > 1e-3  # the update does something
  layer = model.layers[0].attn.q
  assert isinstance(layer, LoRADense)
  layer.merge()
  np.testing.assert_allclose(np.asarray(model(ids)), unmerged, atol=2e-5)
  layer.unmerge()
  np.testing.assert_allclose(np.asarray(layer.base.kernel[...]), base_kernel, atol=1e-6)
  merge_lora(model)  # plain Dense layers again, same function
  assert not lora_layers(model)
  np.testing.assert_allclose(np.asarray(model(ids)), unmerged, atol=2e-5)


def test_dropout_only_under_a_key(ids):
  model = _model()
  apply_lora(model, TARGETS, rank=4, alpha=4, dropout=0.5, rngs=nnx.Rngs(1))
  _randomise_b(model)
  plain = np.asarray(model(ids))
  with lora_dropout(model, None):
    np.testing.assert_array_equal(np.asarray(model(ids)), plain)
  fn = nnx.jit(lambda m, x, k: _dropped(m, x, k))
  a, b = np.asarray(fn(model, ids, jax.random.key(0))), np.asarray(fn(model, ids, jax.random.key(1)))
  assert np.abs(a - plain).max() > 1e-4 and np.abs(a - b).max() > 1e-4
  np.testing.assert_array_equal(np.asarray(model(ids)), plain)  # the key does not outlive the block


def _dropped(model, x, key):
  with lora_dropout(model, key):
    return model(x)


@pytest.mark.parametrize("layout", [dict(scan_layers=True), dict(remat="full")], ids=["scanned", "remat"])
def test_scanned_and_rematerialised_layers_drop_out_as_unrolled(ids, layout):
  """Scan and remat rebuild each layer from its state (split/merge): the dropout key must travel
  with it, one per layer, so GoT-3B (scan_layers) trains with the authors' LoRA dropout."""
  models = {}
  for name, kw in (("unrolled", {}), ("other", layout)):
    models[name] = _model(**kw)
    apply_lora(models[name], TARGETS, rank=4, alpha=4, dropout=0.5, rngs=nnx.Rngs(1))
    _randomise_b(models[name])
  plain = np.asarray(models["unrolled"](ids))
  key = jax.random.key(3)
  want = np.asarray(_dropped(models["unrolled"], ids, key))
  assert np.abs(want - plain).max() > 1e-4
  np.testing.assert_allclose(np.asarray(_dropped(models["other"], ids, key)), want, atol=1e-5)

  def loss(m):  # under a traced grad, as in the train step
    with lora_dropout(m, key):
      return jnp.mean(m(ids) ** 2)

  grads = [nnx.state(nnx.grad(loss)(models[n]), nnx.Param) for n in ("unrolled", "other")]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  assert not hasattr(lora_layers(models["other"])[0], "dropout_key")  # the key does not outlive the block
