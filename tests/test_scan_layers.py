"""scan_layers (wegen_jax/layers/scan.py): the scanned LLM, EVA tower and UNet give the unrolled
model's outputs and parameter gradients on the same weights, and compile to a smaller program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wegen_jax.convert.diffusers import unet_config_from_diffusers
from wegen_jax.layers.scan import scan_blocks
from wegen_jax.models.eva import EVAConfig, EVAVisionTower
from wegen_jax.models.llm import LLM, LLMConfig
from wegen_jax.models.unet import Transformer2DModel, UNet2DConditionModel

LLM_CFG = LLMConfig(
  family="llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=4, num_heads=4, num_kv_heads=2
)
EVA_CFG = EVAConfig(image_size=16, patch_size=4, width=32, depth=3, num_heads=4, mlp_dim=64)


def llm_loss(model, rng):
  ids = jax.random.randint(rng, (2, 12), 0, LLM_CFG.vocab_size)
  segments = jnp.array([[1] * 7 + [2] * 5, [1] * 10 + [0] * 2])  # packing and padding
  return jnp.mean(jnp.square(model.forward(ids, segment_ids=segments).logits))


def eva_loss(model, rng):
  return jnp.mean(jnp.square(model(jax.random.normal(rng, (2, 3, 16, 16)))))


def unet_stack_loss(model, rng):
  k1, k2 = jax.random.split(rng)
  return jnp.mean(jnp.square(model(jax.random.normal(k1, (2, 4, 4, 16)), jax.random.normal(k2, (2, 5, 8)))))


CASES = {
  "llm": (lambda scan, remat: LLM(LLM_CFG.replace(scan_layers=scan, remat=remat), rngs=nnx.Rngs(0)), llm_loss),
  "eva": (
    lambda scan, remat: EVAVisionTower(
      EVA_CFG.replace(scan_layers=scan, remat=remat, post_norm=False), rngs=nnx.Rngs(0)
    ),
    eva_loss,
  ),
  "eva_post_norm": (
    lambda scan, remat: EVAVisionTower(EVA_CFG.replace(scan_layers=scan, remat=remat), rngs=nnx.Rngs(0)),
    eva_loss,
  ),
  # the UNet scans inside each Transformer2DModel (SDXL: 10 blocks deep)
  "unet_stack": (
    lambda scan, remat: Transformer2DModel(
      16, 2, 8, 3, groups=4, linear_projection=True, scan=scan, remat=remat != "none", rngs=nnx.Rngs(0)
    ),
    unet_stack_loss,
  ),
}


def loss_and_grads(model, loss_fn):
  graphdef, state = nnx.split(model)
  step = jax.jit(jax.value_and_grad(lambda st: loss_fn(nnx.merge(graphdef, st), jax.random.key(1))))
  return step(state), step.lower(state).as_text()


@pytest.mark.parametrize(
  "name,remat", [("llm", "none"), ("llm", "full"), ("eva", "none"), ("eva_post_norm", "none"), ("unet_stack", "full")]
)
def test_scanned_equals_unrolled(name, remat):
  build, loss_fn = CASES[name]
  (loss, grads), text = loss_and_grads(build(False, remat), loss_fn)
  (scan_loss, scan_grads), scan_text = loss_and_grads(build(True, remat), loss_fn)
  np.testing.assert_allclose(scan_loss, loss, rtol=1e-5)
  flat, scan_flat = dict(nnx.to_flat_state(grads)), dict(nnx.to_flat_state(scan_grads))
  assert flat.keys() == scan_flat.keys()
  for path, g in flat.items():
    g, sg = np.asarray(g.get_value()), np.asarray(scan_flat[path].get_value())
    np.testing.assert_allclose(sg, g, rtol=1e-5, atol=1e-5 * max(np.abs(g).max(), 1e-12), err_msg=str(path))
  assert scan_text.count("stablehlo.while") > text.count("stablehlo.while")  # (the RNG has loops too)
  # one body per stack: far fewer matmuls in the program than one copy per layer
  assert scan_text.count("dot_general") < 0.7 * text.count("dot_general")


def test_decoding_with_a_cache_is_unchanged():
  """The KV-cache path keeps its per-layer loop: scan_layers changes only full-sequence passes."""
  ids = jnp.arange(6)[None] % LLM_CFG.vocab_size
  unrolled, scanned = LLM(LLM_CFG, rngs=nnx.Rngs(0)), LLM(LLM_CFG.replace(scan_layers=True), rngs=nnx.Rngs(0))
  outs = [m.forward(ids, cache=m.init_cache(1, 8)).logits for m in (unrolled, scanned)]
  np.testing.assert_allclose(outs[1], outs[0], rtol=1e-6, atol=1e-6)


def test_blocks_of_different_structure_are_refused():
  blocks = [nnx.Linear(4, 4, rngs=nnx.Rngs(0)), nnx.Linear(4, 4, use_bias=False, rngs=nnx.Rngs(0))]
  with pytest.raises(ValueError, match="block 1 .* differs in structure"):
    scan_blocks(blocks, jnp.ones((2, 4)))


def test_unet_config_reaches_every_transformer_stack():
  cfg = unet_config_from_diffusers(
    dict(
      block_out_channels=[8, 16],
      down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
      up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
      layers_per_block=1,
      attention_head_dim=2,
      cross_attention_dim=8,
      norm_num_groups=4,
    ),
    scan_layers=True,
  )
  stacks = [
    m
    for _, m in nnx.iter_graph(nnx.eval_shape(lambda: UNet2DConditionModel(cfg, rngs=nnx.Rngs(0))))
    if isinstance(m, Transformer2DModel)
  ]
  assert len(stacks) == 7 and all(m.scan for m in stacks)  # 2 down, 1 mid, 2 x 2 up
