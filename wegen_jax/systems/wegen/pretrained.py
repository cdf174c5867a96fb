"""Pretrained weights for a fresh WeGen run, from local files named in `config.pretrained`.

  llm          HF Llama directory (Llama-2-7b-chat-hf): embeddings and lm_head grow from the
               checkpoint's 32000 rows to WeGen's 32330 (the new tokens keep their fresh init,
               as HF resize_token_embeddings)
  vision       EVA-CLIP visual tower (visual.pt, timm Eva, or WeGen's eva_vision layout)
  unet         diffusers UNet folder (SDXL-base unet/): tensors whose shape WeGen changes
               (cross-attention keys/values for 1792-wide features, the 3328-wide add
               embedding) keep their fresh init, as diffusers' ignore_mismatched_sizes=True
  vae          diffusers AutoencoderKL folder (SDXL vae/)
  detokenizer  the authors' stage-1 SDXLAdapter checkpoint (unet.*)
  mllm         the authors' merged MLLM checkpoint (llm.*, input/output_resampler.*, adapter.*)
Later entries overwrite earlier ones. The trainer applies them only when a run starts (a resumed
run has its own weights), before `init_from`. Each tensor goes to its parameter's sharding.
"""

from __future__ import annotations

from typing import Mapping

from wegen_jax.convert.diffusers import fill_diffusers_unet, fill_diffusers_vae
from wegen_jax.convert.hf_llm import fill_hf_llm
from wegen_jax.convert.timm_eva import fill_timm_eva
from wegen_jax.systems.wegen.convert import load_authors_detokenizer, load_authors_mllm
from wegen_jax.systems.base import load_pretrained_parts


_LOADERS = {
  "llm": lambda m, p: fill_hf_llm(m.llm, p, grow_vocab=True),
  "vision": lambda m, p: fill_timm_eva(m.vision, p),
  "unet": lambda m, p: fill_diffusers_unet(m.unet, p, on_mismatch="keep_init"),
  "vae": lambda m, p: fill_diffusers_vae(m.vae, p),
  "detokenizer": lambda m, p: load_authors_detokenizer(m, str(p)),
  "mllm": lambda m, p: load_authors_mllm(m, str(p)),
}


def load_pretrained(model, paths: Mapping[str, str]) -> list[str]:
  """Fills the parts of `model` named in `paths` (empty entries are skipped); returns the parts loaded."""
  return load_pretrained_parts(model, paths, _LOADERS)
