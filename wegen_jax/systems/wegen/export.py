"""WeGen's parts as PyTorch folders, and back: the tables behind `convert export|import`.

layout=hf (what a PyTorch user loads with the libraries):
  llm/          HF Llama (config.json, model.safetensors or shards + index, tokenizer files):
                LlamaForCausalLM / AutoTokenizer.from_pretrained, the resized WeGen vocabulary
  vision/       the EVA tower: model.safetensors in timm `Eva` names (EVA-CLIP's visual.pt
                names) + config.json with the timm kwargs (`timm_kwargs`) and EVA-CLIP's vision_cfg
  projectors/   model.safetensors: input_resampler.proj.weight [hidden, width] and
                output_resampler.proj.weight [width, hidden] (the authors' names), config.json
  unet/         diffusers UNet2DConditionModel (cross_attention_dim = the vision width)
  vae/          diffusers AutoencoderKL; the tiny default's parameter-free PatchAutoencoder is
                config.json only (space-to-depth, see models/patch_autoencoder.py)
  README.md     (export_run adds run_config.json, the run's config, and MANIFEST.json)
layout=authors (what hzphzp/WeGen's code loads; names of systems/wegen/convert.py):
  pytorch_model_merged.bin      ContinuousLVLMJointLLMSDVAR state dict (llm.*, input_resampler.*,
                                output_resampler.*, adapter.* = the detokenizer UNet)
  detokenizer/pytorch_model.bin SDXLAdapter state dict (unet.*, resampler.scale), stage 1's file
  visual.pt                     eva_vision.py's tower (one qkv.bias, zero k third)
  vae/                          diffusers AutoencoderKL (their code loads SDXL's vae/ folder)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from wegen_jax.convert.checkpoint_io import CheckpointError, read_state_dict, save_state_dict, write_json_config
from wegen_jax.convert import hf_llm, timm_eva
from wegen_jax.convert.diffusers import (
  fill_diffusers_unet,
  fill_diffusers_vae,
  save_diffusers_unet,
  save_diffusers_vae,
  unet_rules,
  vae_rules,
)
from wegen_jax.convert.hf_llm import fill_hf_llm, save_hf_llm
from wegen_jax.convert.mapping import load_state_dict, rules_table
from wegen_jax.convert.timm_eva import (
  PROJECTOR_RULES,
  export_timm_eva,
  export_wegen_projectors,
  fill_timm_eva,
  timm_kwargs,
)
from wegen_jax.convert.mapping import LINEAR, Rule
from wegen_jax.models.patch_autoencoder import PatchAutoencoder, PatchAutoencoderConfig
from wegen_jax.systems.wegen.convert import (
  export_authors_detokenizer,
  export_authors_mllm,
  load_authors_detokenizer,
  load_authors_mllm,
)
from wegen_jax.systems.wegen.tokenizer import BOS, EOS, PAD, load_tokenizer

LAYOUTS = ("hf", "authors")
AUTHORS_MLLM, AUTHORS_DETOKENIZER, AUTHORS_VISUAL = (
  "pytorch_model_merged.bin",
  "detokenizer/pytorch_model.bin",
  "visual.pt",
)
_TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def export(model, config, out: Path, *, layout: str, dtype=None) -> list[str]:
  if layout == "hf":
    parts = _export_hf(model, config, out, dtype)
  elif layout == "authors":
    parts = _export_authors(model, out, dtype)
  else:
    raise CheckpointError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
  (out / "README.md").write_text(_readme(model, layout))
  return parts


def _export_hf(model, config, out: Path, dtype) -> list[str]:
  save_hf_llm(model.llm, out / "llm", dtype=dtype)
  _save_tokenizer(config.data.get("tokenizer", ""), out / "llm")
  vision = out / "vision"
  save_state_dict(export_timm_eva(model.vision, layout="timm", dtype=dtype), vision)
  cfg = model.vision.cfg
  write_json_config(vision, {"timm_kwargs": timm_kwargs(cfg), "eva_clip_vision_cfg": _eva_clip_vision_cfg(cfg)})
  projectors = out / "projectors"
  save_state_dict(export_wegen_projectors(model.input_proj, model.output_proj, dtype), projectors)
  write_json_config(
    projectors,
    {
      "input_resampler": {"in_features": cfg.width, "out_features": model.cfg.llm.hidden_size, "bias": False},
      "output_resampler": {"in_features": model.cfg.llm.hidden_size, "out_features": cfg.width, "bias": False},
      "num_queries": model.cfg.num_image_tokens,
      "pooling": "average pooling of the vision grid to sqrt(num_queries) x sqrt(num_queries), then input_resampler",
    },
  )
  save_diffusers_unet(model.unet, out / "unet", dtype=dtype)
  _export_vae(model, out / "vae", dtype)
  return ["llm", "tokenizer", "vision", "projectors", "unet", "vae"]


def _export_authors(model, out: Path, dtype) -> list[str]:
  try:
    import torch
  except ImportError:
    raise CheckpointError("--layout authors writes torch .bin files: install PyTorch (pip install torch)") from None

  def save_bin(tensors, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: _to_torch(torch, v) for k, v in tensors.items()}, path)

  save_bin(export_authors_mllm(model, include_unet=True, dtype=dtype), out / AUTHORS_MLLM)
  save_bin(export_authors_detokenizer(model, dtype=dtype), out / AUTHORS_DETOKENIZER)
  save_bin(export_timm_eva(model.vision, layout="wegen", dtype=dtype), out / AUTHORS_VISUAL)
  _export_vae(model, out / "vae", dtype)
  return ["mllm", "detokenizer", "vision", "vae"]


def _to_torch(torch, a):
  a = np.asarray(a)
  if a.dtype.name == "bfloat16":
    return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
  return torch.from_numpy(np.ascontiguousarray(a).copy())


def _export_vae(model, path: Path, dtype) -> None:
  if isinstance(model.vae, PatchAutoencoder):  # no weights: its config says how to rebuild it
    path.mkdir(parents=True)
    write_json_config(path, {"_class_name": "PatchAutoencoder", **dataclasses.asdict(model.vae.cfg)})
  else:
    save_diffusers_vae(model.vae, path, dtype=dtype)


def _eva_clip_vision_cfg(cfg) -> dict:
  """EVA-CLIP's vision_cfg keys (what config_from_timm reads back)."""
  return dict(
    image_size=cfg.image_size,
    patch_size=cfg.patch_size,
    width=cfg.width,
    layers=cfg.depth,
    head_width=cfg.width // cfg.num_heads,
    mlp_ratio=cfg.mlp_dim / cfg.width,
    postnorm=cfg.post_norm,
    qkv_bias=cfg.qkv_bias,
    layer_norm_eps=cfg.norm_eps,
  )


def _save_tokenizer(source: str, out: Path) -> None:
  """The run's tokenizer beside the LLM: a real one's files copied (tokenizer.json with the WeGen
  tokens it was given), the built-in tiny one as a PreTrainedTokenizerFast."""
  load_tokenizer(source).save(out)
  if source and Path(source).is_dir():
    for name in _TOKENIZER_FILES:
      if (Path(source) / name).is_file():
        shutil.copy2(Path(source) / name, out / name)
  if not (out / "tokenizer_config.json").exists():
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": "<unk>"}
    (out / "tokenizer_config.json").write_text(
      json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **special}, indent=2)
    )


def import_into(model, src: Path) -> list[str]:
  """Fills `model` from an export (either layout) or the authors' released files in `src`."""
  if (src / "llm").is_dir() and (src / "unet").is_dir():
    return _import_hf(model, src)
  if (src / AUTHORS_MLLM).is_file() or (src / AUTHORS_DETOKENIZER).is_file():
    return _import_authors(model, src)
  raise CheckpointError(
    f"{src} holds neither an hf export (llm/, unet/, vision/, projectors/) nor the authors' files "
    f"({AUTHORS_MLLM}, {AUTHORS_DETOKENIZER}, {AUTHORS_VISUAL})"
  )


def _need(path: Path) -> Path:
  if not path.exists():
    raise CheckpointError(f"{path} is missing: the import needs every part of the model")
  return path


def _import_hf(model, src: Path) -> list[str]:
  fill_hf_llm(model.llm, _need(src / "llm"))
  fill_timm_eva(model.vision, _need(src / "vision"))
  sd = read_state_dict(_need(src / "projectors"))
  for ours, prefix in ((model.input_proj, "input_resampler."), (model.output_proj, "output_resampler.")):
    sub = {k[len(prefix) :]: sd[k] for k in sd if k.startswith(prefix)}
    load_state_dict(ours, sub, PROJECTOR_RULES, ignore=[r"^avgpoolquery\."], source=f"{src / 'projectors'} ({prefix}*)")
  fill_diffusers_unet(model.unet, _need(src / "unet"))
  _import_vae(model, src / "vae")
  return ["llm", "vision", "projectors", "unet", "vae"]


def _import_authors(model, src: Path) -> list[str]:
  parts, mllm_has_unet = [], False
  if (src / AUTHORS_MLLM).is_file():
    sd = read_state_dict(src / AUTHORS_MLLM)
    load_authors_mllm(model, sd)
    mllm_has_unet = any(k.startswith("adapter.unet.") for k in sd)
    parts.append("mllm")
  if not mllm_has_unet:  # the detokenizer of stage 1 (an MLLM file's adapter.* is the same UNet, later)
    load_authors_detokenizer(model, str(_need(src / AUTHORS_DETOKENIZER)))
    parts.append("detokenizer")
  fill_timm_eva(model.vision, _need(src / AUTHORS_VISUAL))
  _import_vae(model, src / "vae")
  return parts + ["vision", "vae"]


def _import_vae(model, path: Path) -> None:
  if isinstance(model.vae, PatchAutoencoder):
    return  # no weights
  fill_diffusers_vae(model.vae, _need(path))


def _readme(model, layout: str) -> str:
  d = model.cfg
  if layout == "hf":
    body = f"""Load each part with its library (all float tensors in safetensors):

    transformers.LlamaForCausalLM.from_pretrained("llm"); transformers.AutoTokenizer.from_pretrained("llm")
    timm.models.eva.Eva(**json.load(open("vision/config.json"))["timm_kwargs"]) + load_state_dict(vision/model.safetensors)
    diffusers.UNet2DConditionModel.from_pretrained("unet")
    {"the PatchAutoencoder of vae/config.json (pixels folded 2x2 into channels; no weights)" if isinstance(model.vae, PatchAutoencoder) else 'diffusers.AutoencoderKL.from_pretrained("vae")'}
    projectors/model.safetensors: two Linear(bias=False) weights, PyTorch [out, in] layout

The image path: vision tower patch tokens (CLS dropped, no final norm) -> average pool to {d.num_image_tokens}
tokens -> input_resampler -> the LLM's embeddings at the <img_i> positions. Generated image tokens:
the LLM's last hidden states -> output_resampler -> {d.num_image_tokens} x {d.vision.width} features -> the UNet's
encoder_hidden_states, text_embeds = their mean, time_ids = zeros.{" The UNet's input is the latents concatenated with the features as an 8x8 grid (nearest-upsampled to the latent size)." if d.spatial_features else ""}
run_config.json is the run's config: `python -m wegen_jax.convert import --from THIS --system wegen --out RUN`
turns this folder back into a run directory.
"""
  else:
    body = f"""Files in the names hzphzp/WeGen's (SEED-X's) code loads:

    {AUTHORS_MLLM}       ContinuousLVLMJointLLMSDVAR (src/models/mllm/wegen_mllm_var.py): pretrained_model_path
                                   of the configs/clm_models/*.yaml MLLM config (llm.*, input/output_resampler.*, adapter.*)
    {AUTHORS_DETOKENIZER}  SDXLAdapter (src/models/detokenizer/adapter_modules.py): pretrained_model_path of the
                                   detokenizer config (unet.*, resampler.scale)
    {AUTHORS_VISUAL}                     eva_vision.py's visual tower (model_path of the visual encoder config)
    vae/                          diffusers AutoencoderKL.from_pretrained (the SDXL VAE folder)

The .bin files hold plain tensors (torch.load(..., weights_only=True) reads them).
"""
  return f"# WeGen weights ({layout} layout), written by `python -m wegen_jax.convert export`\n\n{body}"


def mapping_tables(cfg) -> str:
  """Markdown: every conversion table of a WeGenConfig, per exported file (docs/CONVERT_TABLES.md)."""
  vae = (
    "The PatchAutoencoder has no parameters.\n"
    if isinstance(cfg.vae, PatchAutoencoderConfig)
    else rules_table(vae_rules(cfg.vae))
  )
  sections = [
    ("`llm/model.safetensors` (hf); `llm.` + the key in `pytorch_model_merged.bin` (authors)", "llm.",
     rules_table(hf_llm.rules(cfg.llm))),
    ("`vision/model.safetensors` (hf, timm `Eva`); `visual.pt` (authors)", "vision.",
     "timm and EVA-CLIP store `attn.qkv.weight` fused ([3 * width, width]: q, k, v rows) with `attn.q_bias` and "
     "`attn.v_bias`; the authors' `visual.pt` holds `attn.qkv.bias` with a zero k third instead. Split, they map "
     "as below.\n\n" + rules_table(timm_eva.rules())),
    ("`projectors/model.safetensors` (hf); `pytorch_model_merged.bin` (authors)", "input_proj. / output_proj.",
     rules_table([Rule(f"{ours}.proj.kernel", f"{theirs}.proj.weight", LINEAR)
                  for ours, theirs in (("input_proj", "input_resampler"), ("output_proj", "output_resampler"))])
     + "`input_resampler.avgpoolquery.scale` (an unused parameter of the authors' AvgPoolQuery) is written as 1.\n"),
    ("`unet/diffusion_pytorch_model.safetensors` (hf); `adapter.unet.` + the key in `pytorch_model_merged.bin`, "
     "`unet.` + the key in `detokenizer/pytorch_model.bin` (authors)", "unet.", rules_table(unet_rules(cfg.unet))),
    ("`vae/diffusion_pytorch_model.safetensors` (both layouts)", "vae.", vae),
  ]  # fmt: skip
  out = []
  for title, ours, table in sections:
    out.append(f"### {title}\n\nOur paths are under `{ours}` of the WeGen module.\n\n{table}")
  return "\n".join(out)
