"""GoT in the authors' release layout and back (`python -m wegen_jax.convert export|import`).

  OUT/mllm/        HF Qwen2.5-VL folder (Qwen2_5_VLForConditionalGeneration; a Qwen2 causal LM when
                   the model has no vision tower), LoRA merged into the base kernels (GoT's 66
                   tokens are rows of its embeddings)
                   + tokenizer.json when the run names one
  OUT/unet/        diffusers UNet2DConditionModel folder, in_channels 12 ([noisy | reference | spatial])
  OUT/ssgm/        model.safetensors: output_projector.projector.{weight,bias} (2048 -> 2048, the
                   64 cross-attention tokens) and output_projector_add.projector.{weight,bias}
                   (2048 -> 1280, pooled), the authors' GenCot attribute names, PyTorch [out, in]
  OUT/vae/         diffusers AutoencoderKL folder (not for the tiny default's parameter-free one)

Import reads the same folders; the LoRA wrappers then hold the merged weights in their base
kernels with B = 0, so the imported model computes what the exported one did.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from wegen_jax.convert.checkpoint_io import CheckpointError, read_state_dict, save_state_dict, write_json_config
from wegen_jax.convert.diffusers import fill_diffusers_unet, fill_diffusers_vae, save_diffusers_unet, save_diffusers_vae
from wegen_jax.convert.hf_llm import fill_hf_llm, save_hf_llm
from wegen_jax.convert.hf_qwen2_5_vl import fill_hf_qwen2_5_vl, save_hf_qwen2_5_vl
from wegen_jax.layers.lora import lora_layers, lora_unwrapped
from wegen_jax.models.vae import AutoencoderKL

LAYOUTS = ("authors",)
SSGM = {"semantic": "output_projector.projector", "pooled": "output_projector_add.projector"}


def ssgm_state_dict(model, dtype=None) -> dict[str, np.ndarray]:
  out = {}
  for ours, theirs in SSGM.items():
    dense = getattr(model, ours)
    out[f"{theirs}.weight"] = np.asarray(dense.kernel[...]).T
    out[f"{theirs}.bias"] = np.asarray(dense.bias[...])
  return {k: (v.astype(dtype) if dtype is not None else v) for k, v in out.items()}


def export(model, config, out: Path, *, layout: str = "authors", dtype=None) -> list[str]:
  if layout not in LAYOUTS:
    raise CheckpointError(f"--layout {layout!r}: GoT exports {', '.join(LAYOUTS)}")
  out = Path(out)
  with lora_unwrapped(model.llm, merged=True):
    if model.visual is not None:
      save_hf_qwen2_5_vl(model.qwen_vl_view(), out / "mllm", dtype=dtype)
    else:
      save_hf_llm(model.llm, out / "mllm", dtype=dtype)
  tokenizer = config.data.get("tokenizer", "")
  if tokenizer:
    from wegen_jax.systems.got.tokenizer import load_tokenizer

    load_tokenizer(tokenizer, model.cfg.num_gen_tokens).save(out / "mllm")
  save_diffusers_unet(model.unet, out / "unet", dtype=dtype)
  save_state_dict(ssgm_state_dict(model, dtype), out / "ssgm")
  e = model.cfg.llm.hidden_size
  write_json_config(
    out / "ssgm",
    {
      "output_projector": {"in_features": e, "out_features": e, "bias": True},
      "output_projector_add": {"in_features": e, "out_features": model.cfg.pooled_dim, "bias": True},
      "num_img_out_tokens": model.cfg.num_gen_tokens,
    },
  )
  parts = ["mllm", "unet", "ssgm"]
  if isinstance(model.vae, AutoencoderKL):
    save_diffusers_vae(model.vae, out / "vae", dtype=dtype)
    parts.append("vae")
  return parts


def import_into(model, src: Path) -> list[str]:
  """Fills `model` from an export's folders (each must exist); returns the parts read."""
  src = Path(src)
  for part in ("mllm", "unet", "ssgm"):
    if not (src / part).is_dir():
      raise CheckpointError(f"{src / part} does not exist: a GoT export has mllm/, unet/ and ssgm/ folders")
  with lora_unwrapped(model.llm):
    if model.visual is not None:
      fill_hf_qwen2_5_vl(model.qwen_vl_view(), read_state_dict(src / "mllm"), source=str(src / "mllm"))
    else:
      fill_hf_llm(model.llm, src / "mllm")
  # fresh adapters on the merged weights (A as at init, B zero): the same function, trainable again
  for i, layer in enumerate(lora_layers(model.llm)):
    a, b = layer.lora_a.get_value(), layer.lora_b.get_value()
    bound = (6.0 / ((1 + 5.0) * a.shape[0])) ** 0.5
    layer.lora_a.set_value(jax.random.uniform(jax.random.key(i), a.shape, a.dtype, -bound, bound))
    layer.lora_b.set_value(jnp.zeros(b.shape, b.dtype))
  fill_diffusers_unet(model.unet, src / "unet")
  tensors = read_state_dict(src / "ssgm")
  for ours, theirs in SSGM.items():
    dense = getattr(model, ours)
    dense.kernel.set_value(jnp.asarray(np.asarray(tensors[f"{theirs}.weight"]).T, dense.kernel.get_value().dtype))
    dense.bias.set_value(jnp.asarray(tensors[f"{theirs}.bias"], dense.bias.get_value().dtype))
  parts = ["mllm", "unet", "ssgm"]
  if isinstance(model.vae, AutoencoderKL) and (src / "vae").is_dir():
    fill_diffusers_vae(model.vae, src / "vae")
    parts.append("vae")
  return parts
