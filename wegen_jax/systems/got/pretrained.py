"""Pretrained weights for a fresh GoT run, from local files named in `config.pretrained`.

llm   Qwen2.5-VL-3B-Instruct HF directory (its text model; the vision tower is skipped until the
      VL model lands): the LoRA wrappers keep their fresh A / zero B, GoT's 66 added token rows
      start at the mean of the checkpoint's rows (HF resize_token_embeddings' default)
unet  diffusers UNet folder: SDXL-base's 4-channel unet/ (conv_in widened to 12 inputs, the 8
      new channels zero, as the authors do) or a GoT 12-channel one
vae   diffusers AutoencoderKL folder (SDXL vae/)
"""

from __future__ import annotations

from typing import Mapping

from flax import nnx

from wegen_jax.convert.checkpoint_io import read_state_dict
from wegen_jax.convert.diffusers import fill_diffusers_unet, fill_diffusers_vae
from wegen_jax.convert.hf_llm import fill_hf_llm
from wegen_jax.convert.hf_qwen2_5_vl import fill_hf_qwen2_5_vl
from wegen_jax.layers.lora import lora_unwrapped
from wegen_jax.models.unet import UNet2DConditionModel, widen_conv_in
from wegen_jax.systems.base import load_pretrained_parts


def load_llm(model, path) -> None:
  state_dict = read_state_dict(path)
  rows = next(v.shape[0] for k, v in state_dict.items() if k.endswith("embed_tokens.weight"))
  with lora_unwrapped(model.llm):
    if model.visual is not None:
      fill_hf_qwen2_5_vl(model.qwen_vl_view(), state_dict, source=str(path))
    else:
      fill_hf_llm(model.llm, state_dict, grow_vocab=True, source=str(path))
  table = model.llm.embed.embedding
  if table.shape[0] > rows:
    mean = table[...][:rows].mean(axis=0)
    table.set_value(table[...].at[rows:].set(mean))


def load_unet(model, path) -> None:
  """A 12-channel folder fills the UNet as is; a 4-channel one is widened (new channels zero)."""
  state_dict = read_state_dict(path)
  in_channels = state_dict["conv_in.weight"].shape[1]
  cfg = model.unet.cfg
  if in_channels == cfg.in_channels:
    fill_diffusers_unet(model.unet, state_dict)
    return
  small = nnx.eval_shape(lambda: UNet2DConditionModel(cfg.replace(in_channels=in_channels), rngs=nnx.Rngs(0)))
  fill_diffusers_unet(small, state_dict)
  wide = widen_conv_in(small, cfg.in_channels)
  nnx.update(model.unet, nnx.state(wide))


_LOADERS = {"llm": load_llm, "unet": load_unet, "vae": lambda m, p: fill_diffusers_vae(m.vae, p)}


def load_pretrained(model, paths: Mapping[str, str]) -> list[str]:
  """Fills the parts of `model` named in `paths` (empty entries are skipped); returns the parts loaded."""
  return load_pretrained_parts(model, paths, _LOADERS)
