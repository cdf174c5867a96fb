"""The authors' checkpoint layout: a state dict built by the PyTorch modules they use
(LlamaForCausalLM under `llm.`, Linear projectors under `input_resampler.`/`output_resampler.`,
the diffusers UNet under `adapter.unet.`), saved as a .bin, loads into our WeGen (read with
torch.load(weights_only=True)), gives the same outputs, and exports back to identical tensors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wegen_batches import random_model, tiny_config
from wegen_jax.convert.checkpoint_io import CheckpointError
from wegen_jax.convert.diffusers import unet_config_to_diffusers
from wegen_jax.convert.hf_llm import hf_config
from wegen_jax.systems.wegen import WeGenConfig
from wegen_jax.systems.wegen.convert import (
  export_authors_detokenizer,
  export_authors_mllm,
  load_authors_detokenizer,
  load_authors_mllm,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  torch.manual_seed(0)
  cfg = WeGenConfig.from_dict(tiny_config(exports=True).model)
  llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config(cfg.llm))).eval()
  unet_kwargs = {k: v for k, v in unet_config_to_diffusers(cfg.unet).items() if not k.startswith("_")}
  unet = diffusers.UNet2DConditionModel(**unet_kwargs).eval()
  width, hidden = cfg.vision.width, cfg.llm.hidden_size
  sd = {f"llm.{k}": v for k, v in llama.state_dict().items()}
  sd["input_resampler.proj.weight"] = torch.randn(hidden, width) / width**0.5
  sd["input_resampler.avgpoolquery.scale"] = torch.tensor(1.0)
  sd["output_resampler.proj.weight"] = torch.randn(width, hidden) / hidden**0.5
  sd.update({f"adapter.unet.{k}": v for k, v in unet.state_dict().items()})
  sd["adapter.resampler.scale"] = torch.tensor(1.0)
  path = tmp_path_factory.mktemp("authors") / "pytorch_model_merged.bin"
  torch.save(sd, path)
  return cfg, llama, unet, sd, path


def test_authors_mllm_checkpoint_loads_with_the_same_outputs(reference):
  cfg, llama, unet, sd, path = reference
  model = load_authors_mllm(random_model(cfg, seed=5), path)
  ids = np.random.RandomState(0).randint(0, cfg.llm.vocab_size, (2, 12))
  with torch.no_grad():
    want = llama(torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(np.asarray(model.llm(jnp.asarray(ids))), want, atol=1e-4, rtol=1e-4)

  h = np.random.RandomState(1).randn(2, 64, cfg.llm.hidden_size).astype(np.float32)
  feats = np.asarray(model.output_proj(jnp.asarray(h)))
  np.testing.assert_allclose(feats, h @ sd["output_resampler.proj.weight"].numpy().T, atol=1e-4, rtol=1e-4)
  back = np.asarray(model.feedback(jnp.asarray(h)))
  np.testing.assert_allclose(back, feats @ sd["input_resampler.proj.weight"].numpy().T, atol=1e-4, rtol=1e-4)

  rs = np.random.RandomState(2)
  sample = rs.randn(2, cfg.unet.in_channels, 8, 8).astype(np.float32)
  t = np.array([10, 500])
  cond = rs.randn(2, 64, cfg.vision.width).astype(np.float32)
  added = {"text_embeds": cond.mean(1), "time_ids": np.zeros((2, 6), np.float32)}
  with torch.no_grad():
    want = unet(
      torch.tensor(sample),
      torch.tensor(t),
      torch.tensor(cond),
      added_cond_kwargs={k: torch.tensor(v) for k, v in added.items()},
    ).sample.numpy()
  got = model.unet(jnp.asarray(sample), jnp.asarray(t), jnp.asarray(cond), jax.tree.map(jnp.asarray, added))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)


def test_export_round_trip_is_exact(reference):
  cfg, _, _, sd, path = reference
  model = load_authors_mllm(random_model(cfg, seed=6), path)
  out = export_authors_mllm(model)
  assert set(out) == set(sd)
  for k, v in sd.items():
    assert out[k].shape == tuple(v.shape), k
    np.testing.assert_array_equal(out[k], v.numpy(), err_msg=k)
  # and back in again: same tensors
  again = export_authors_mllm(load_authors_mllm(random_model(cfg, seed=7), out))
  assert all(np.array_equal(again[k], out[k]) for k in out)
  # the stage-1 detokenizer layout (SDXLAdapter: unet.*, resampler.scale)
  detok = export_authors_detokenizer(model)
  fresh = load_authors_detokenizer(random_model(cfg, seed=8), detok)
  assert all(np.array_equal(v, detok[k]) for k, v in export_authors_detokenizer(fresh).items())


def test_load_errors_name_the_tensor(reference):
  cfg, _, _, sd, _ = reference
  bad = {k: v.numpy() for k, v in sd.items()}
  bad["llm.model.norm.weight"] = bad["llm.model.norm.weight"][:-1]
  with pytest.raises(CheckpointError, match="llm.*norm"):
    load_authors_mllm(random_model(cfg), bad)
  stray = dict(bad, **{"visual_encoder.x": np.zeros(1)})
  with pytest.raises(CheckpointError, match="visual_encoder.x"):
    load_authors_mllm(random_model(cfg), stray)
  no_unet = {k: v.numpy() for k, v in sd.items() if not k.startswith("adapter.")}
  with pytest.raises(CheckpointError, match="adapter.unet"):
    load_authors_mllm(random_model(cfg), no_unet, load_unet=True)
