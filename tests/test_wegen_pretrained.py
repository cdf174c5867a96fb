"""config.pretrained: a fresh WeGen run starts from local PyTorch-layout weights, the way the real
one starts from Llama-2-7b-chat-hf, EVA-CLIP's visual.pt and SDXL's UNet and VAE folders.
Tiny random stand-ins in those layouts: the LLM has fewer token rows than WeGen (as Llama-2's
32000 vs 32330), the UNet was built for a wider condition (as SDXL's 2048 vs WeGen's 1792)."""

import numpy as np
import pytest

from wegen_batches import random_model, tiny_config
from wegen_jax.convert.checkpoint_io import CheckpointError, save_safetensors
from wegen_jax.convert.diffusers import unet_config_to_diffusers, vae_config_to_diffusers
from wegen_jax.convert.hf_llm import hf_config
from wegen_jax.layers.paths import param_paths
from wegen_jax.convert.timm_eva import export_timm_eva
from wegen_jax.systems.wegen import WeGenConfig
from wegen_jax.systems.wegen.pretrained import load_pretrained

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

HF_VOCAB = 320  # < the tiny WeGen vocabulary (576): the added tokens keep their init


def _plain(d):
  return {k: v for k, v in d.items() if not k.startswith("_")}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  torch.manual_seed(0)
  root = tmp_path_factory.mktemp("pretrained")
  cfg = WeGenConfig.from_dict(tiny_config(sdxl_vae=True, exports=True).model)
  llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**dict(hf_config(cfg.llm), vocab_size=HF_VOCAB)))
  llama.save_pretrained(root / "llm")
  wide = dict(
    _plain(unet_config_to_diffusers(cfg.unet)),
    cross_attention_dim=48,
    projection_class_embeddings_input_dim=48 + 6 * cfg.unet.addition_time_embed_dim,
  )
  unet = diffusers.UNet2DConditionModel(**wide)
  unet.save_pretrained(root / "unet")
  vae = diffusers.AutoencoderKL(**_plain(vae_config_to_diffusers(cfg.vae)))
  vae.save_pretrained(root / "vae")
  eva = random_model(cfg, seed=7).vision
  save_safetensors(export_timm_eva(eva), root / "visual.safetensors")
  paths = dict(
    llm=str(root / "llm"), vision=str(root / "visual.safetensors"), unet=str(root / "unet"), vae=str(root / "vae")
  )
  return cfg, paths, llama, unet, vae, eva


def test_every_part_loads_with_grown_vocab_and_reshaped_unet_tensors_kept(sources, capsys):
  cfg, paths, llama, unet, vae, eva = sources
  model = random_model(cfg, seed=0)
  before = {p: np.asarray(v.get_value()) for p, v in param_paths(model).items()}
  assert load_pretrained(model, paths) == ["llm", "vision", "unet", "vae"]
  after = {p: np.asarray(v.get_value()) for p, v in param_paths(model).items()}
  hf = {k: v.detach().numpy() for k, v in llama.state_dict().items()}

  np.testing.assert_array_equal(after["llm.layers.0.attn.q.kernel"], hf["model.layers.0.self_attn.q_proj.weight"].T)
  np.testing.assert_array_equal(after["llm.embed.embedding"][:HF_VOCAB], hf["model.embed_tokens.weight"])
  np.testing.assert_array_equal(after["llm.embed.embedding"][HF_VOCAB:], before["llm.embed.embedding"][HF_VOCAB:])
  if "llm.lm_head.kernel" in after:
    np.testing.assert_array_equal(after["llm.lm_head.kernel"][:, :HF_VOCAB], hf["lm_head.weight"].T)
    np.testing.assert_array_equal(after["llm.lm_head.kernel"][:, HF_VOCAB:], before["llm.lm_head.kernel"][:, HF_VOCAB:])

  for path, value in param_paths(eva).items():
    np.testing.assert_array_equal(after["vision." + path], np.asarray(value.get_value()), err_msg=path)

  theirs = {k: v.detach().numpy() for k, v in unet.state_dict().items()}
  np.testing.assert_array_equal(after["unet.conv_in.kernel"], theirs["conv_in.weight"].transpose(2, 3, 1, 0))
  kept = [p for p in after if p.startswith("unet.") and p.endswith(".kernel") and np.array_equal(after[p], before[p])]
  assert kept and all(
    ("attn2" in p and (".k." in p or ".v." in p)) or p.startswith("unet.add_embedding.linear_1") for p in kept
  ), kept
  out = capsys.readouterr().out
  assert "kept at its initial value" in out and f"fills the first {HF_VOCAB}" in out

  theirs = {k: v.detach().numpy() for k, v in vae.state_dict().items()}
  np.testing.assert_array_equal(
    after["vae.encoder.conv_in.kernel"], theirs["encoder.conv_in.weight"].transpose(2, 3, 1, 0)
  )


def test_missing_or_unknown_sources_are_clear_errors(sources, tmp_path):
  cfg, paths, *_ = sources
  model = random_model(cfg)
  with pytest.raises(CheckpointError, match="config.pretrained.vae .*does not exist"):
    load_pretrained(model, dict(vae=str(tmp_path / "nowhere")))
  with pytest.raises(ValueError, match="unknown entries \\['sdxl'\\]"):
    load_pretrained(model, dict(sdxl=paths["unet"]))
  with pytest.raises(CheckpointError, match="does not fit|lacks|shape"):
    load_pretrained(model, dict(vae=paths["unet"]))  # a UNet folder where the VAE is expected


def test_trainer_hook_fills_a_sharded_model_in_place(sources):
  """WeGenTask.init_pretrained (called by the trainer when a run starts) keeps every parameter
  on its FSDP sharding while filling it."""
  from wegen_jax.parallel import make_mesh, shard_module
  from wegen_jax.systems.wegen.task import WeGenTask

  cfg, paths, _, _, vae, _ = sources
  config = tiny_config(stage=1, sdxl_vae=True, exports=True)
  config.pretrained.vae = paths["vae"]
  mesh = make_mesh(dict(data=1, fsdp=8, tensor=1))
  model = shard_module(random_model(cfg), mesh)
  placed = {p: v.get_value().sharding for p, v in param_paths(model).items()}
  assert any(not s.is_fully_replicated for s in placed.values())
  WeGenTask(config).init_pretrained(model)
  for p, v in param_paths(model).items():
    assert v.get_value().sharding == placed[p], p
  theirs = vae.state_dict()["decoder.conv_out.weight"].detach().numpy()
  np.testing.assert_array_equal(
    np.asarray(param_paths(model)["vae.decoder.conv_out.kernel"].get_value()), theirs.transpose(2, 3, 1, 0)
  )
