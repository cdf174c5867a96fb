"""The authors' released checkpoint layout (hzphzp/WeGen, from AILab-CVC/SEED-X) <-> WeGen.

MLLM checkpoint (`pytorch_model_merged.bin`, the state dict of ContinuousLVLMJointLLMSDVAR):
  llm.model.*, llm.lm_head.weight            LlamaForCausalLMVAR (HF Llama names)
  input_resampler.proj.weight                AvgPoolProjector Linear(1792 -> 4096, no bias)
  input_resampler.avgpoolquery.scale         unused parameter of AvgPoolQuery
  output_resampler.proj.weight               LinearProjector Linear(4096 -> 1792, no bias)
  adapter.unet.*, adapter.resampler.scale    the SDXLAdapter, present when the diffusion loss
                                             was on (its UNet in diffusers names)
Detokenizer checkpoint (stage 1, SDXLAdapter.state_dict()): unet.*, resampler.scale.
The vision tower (EVA-CLIP visual.pt) and the SDXL VAE come as their own files: use
convert.timm_eva.load_timm_eva and convert.diffusers.load_diffusers_vae.
Files are read by checkpoint_io.read_state_dict (torch.load(weights_only=True) for .bin/.pt).
Export writes the same names (safetensors; `torch.save(safetensors.torch.load_file(f), bin)`
makes the .bin their from_pretrained reads).
"""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np

from wegen_jax.convert import hf_llm
from wegen_jax.convert.checkpoint_io import CheckpointError, state_dict_and_source
from wegen_jax.convert.diffusers import unet_rules
from wegen_jax.convert.mapping import export_state_dict, load_state_dict
from wegen_jax.convert.timm_eva import PROJECTOR_RULES, export_wegen_projectors

MLLM_PARTS = ("llm.", "input_resampler.", "output_resampler.", "adapter.")
_LLM_IGNORE = (r"rotary_emb\.inv_freq$",)


class _Prefixed(Mapping[str, np.ndarray]):
  """Lazy view of the keys under `prefix`, with the prefix removed."""

  def __init__(self, state_dict: Mapping[str, np.ndarray], prefix: str):
    self.sd, self.prefix = state_dict, prefix
    self.keys_ = [k[len(prefix) :] for k in state_dict if k.startswith(prefix)]

  def __getitem__(self, key):
    return np.asarray(self.sd[self.prefix + key])

  def __iter__(self) -> Iterator[str]:
    return iter(self.keys_)

  def __len__(self) -> int:
    return len(self.keys_)


def load_authors_mllm(model, state_dict_or_path, *, load_unet: bool | None = None, strict: bool = True):
  """Fills model.llm, input_proj, output_proj (and model.unet from `adapter.unet.*` when the
  checkpoint has it, or load_unet=True demands it) in place; returns the model."""
  sd, source = state_dict_and_source(state_dict_or_path)
  unknown = [k for k in sd if not k.startswith(MLLM_PARTS)]
  if unknown and strict:
    raise CheckpointError(
      f"{source}: {len(unknown)} tensor(s) outside the WeGen MLLM layout {MLLM_PARTS}, e.g. {unknown[:5]}"
    )
  has_unet = any(k.startswith("adapter.unet.") for k in sd)
  if load_unet and not has_unet:
    raise CheckpointError(
      f"{source} has no adapter.unet.* tensors (saved without the diffusion loss?); "
      "load the stage-1 UNet with load_authors_detokenizer or load_diffusers_unet"
    )
  cfg = model.cfg
  load_state_dict(
    model.llm, _Prefixed(sd, "llm."), hf_llm.rules(cfg.llm), ignore=_LLM_IGNORE, source=f"{source} (llm.*)"
  )
  for ours, theirs in ((model.input_proj, "input_resampler."), (model.output_proj, "output_resampler.")):
    load_state_dict(
      ours, _Prefixed(sd, theirs), PROJECTOR_RULES, ignore=[r"^avgpoolquery\."], source=f"{source} ({theirs}*)"
    )
  if has_unet and load_unet is not False:
    load_authors_detokenizer(model, _Prefixed(sd, "adapter."), source=f"{source} (adapter.*)")
  return model


def load_authors_detokenizer(model, state_dict_or_path, *, source: str | None = None):
  """model.unet from an SDXLAdapter state dict (`unet.*` in diffusers names, `resampler.scale`)."""
  sd, src = state_dict_and_source(state_dict_or_path)
  load_state_dict(model.unet, _Prefixed(sd, "unet."), unet_rules(model.cfg.unet), source=source or src)
  extra = [k for k in sd if not k.startswith(("unet.", "resampler."))]
  if extra:
    raise CheckpointError(f"{source or src}: unexpected detokenizer tensors {extra[:5]}")
  return model


def export_authors_mllm(model, *, include_unet: bool = True, dtype=None) -> dict[str, np.ndarray]:
  """The MLLM state dict in the authors' names (with `adapter.*` when include_unet)."""
  cfg = model.cfg
  out = {f"llm.{k}": v for k, v in export_state_dict(model.llm, hf_llm.rules(cfg.llm), dtype).items()}
  if cfg.llm.tie_word_embeddings:
    out["llm.lm_head.weight"] = out["llm.model.embed_tokens.weight"]
  out.update(export_wegen_projectors(model.input_proj, model.output_proj, dtype))
  if include_unet:
    out.update({f"adapter.{k}": v for k, v in export_authors_detokenizer(model, dtype=dtype).items()})
  return out


def export_authors_detokenizer(model, *, dtype=None) -> dict[str, np.ndarray]:
  out = {f"unet.{k}": v for k, v in export_state_dict(model.unet, unet_rules(model.cfg.unet), dtype).items()}
  out["resampler.scale"] = np.asarray(1.0, dtype or np.float32)  # AvgPoolQuery's unused scale
  return out
