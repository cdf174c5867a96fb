"""GoT's release layout (systems/got/export.py): the exported MLLM (Qwen2.5-VL, LoRA merged) loads
in transformers with the same logits, the UNet in diffusers with 3 x latent input channels, the SSGM
as the authors' Linear layers; importing the folders back gives the same model function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from test_got import random_model, tiny_config
from wegen_jax.layers.lora import lora_layers
from wegen_jax.systems.got import GoTConfig, System


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  config = tiny_config()
  cfg = GoTConfig.from_dict(config.model)
  model = random_model(cfg)
  for i, layer in enumerate(lora_layers(model.llm)):  # a trained adapter: merging must matter
    layer.lora_b.set_value(0.05 * jax.random.normal(jax.random.key(i), layer.lora_b.shape))
  out = tmp_path_factory.mktemp("got_export")
  parts = System(config, model).export_pytorch(out, layout="authors")
  return config, model, out, parts


def test_export_loads_in_pytorch(exported):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  diffusers = pytest.importorskip("diffusers")
  config, model, out, parts = exported
  assert parts == ["mllm", "unet", "ssgm"]
  ids = np.random.default_rng(0).integers(0, 336, (1, 12))
  hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(out / "mllm").eval()
  with torch.no_grad():
    theirs = hf(torch.as_tensor(ids)).logits.numpy()
  ours = np.asarray(model.llm(jnp.asarray(ids, jnp.int32)))
  np.testing.assert_allclose(theirs, ours, atol=1e-4)
  unet = diffusers.UNet2DConditionModel.from_pretrained(out / "unet")
  lc = model.cfg.vae.latent_channels
  assert unet.config.in_channels == 3 * lc and unet.conv_in.weight.shape[1] == 3 * lc
  np.testing.assert_allclose(
    unet.conv_in.weight.detach().numpy(), np.transpose(np.asarray(model.unet.conv_in.kernel[...]), (3, 2, 0, 1))
  )
  from safetensors.numpy import load_file

  ssgm = load_file(out / "ssgm" / "model.safetensors")
  np.testing.assert_array_equal(ssgm["output_projector.projector.weight"], np.asarray(model.semantic.kernel[...]).T)
  assert ssgm["output_projector_add.projector.weight"].shape == (model.cfg.pooled_dim, model.cfg.llm.hidden_size)


def test_import_back_is_the_same_function(exported):
  config, model, out, _ = exported
  back, parts = System.import_pytorch(config, out)
  assert parts == ["mllm", "unet", "ssgm"]
  ids = jnp.asarray(np.random.default_rng(1).integers(0, 336, (2, 10)), jnp.int32)
  np.testing.assert_allclose(np.asarray(back.llm(ids)), np.asarray(model.llm(ids)), atol=2e-5)
  assert all(not np.asarray(layer.lora_b[...]).any() for layer in lora_layers(back.llm))
  vis = lambda m: [np.asarray(v.get_value()) for _, v in nnx.to_flat_state(nnx.state(m.visual, nnx.Param))]
  assert all(np.array_equal(x, y) for x, y in zip(vis(back), vis(model), strict=True))
  assert np.asarray(lora_layers(back.llm)[0].lora_a[...]).std() > 0  # adapters can train again
  for name in ("semantic", "pooled"):
    np.testing.assert_array_equal(
      np.asarray(getattr(back, name).kernel[...]), np.asarray(getattr(model, name).kernel[...])
    )
  flat = lambda m: {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(m.unet, nnx.Param))}
  a, b = flat(back), flat(model)
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
