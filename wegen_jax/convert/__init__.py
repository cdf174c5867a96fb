"""Checkpoint conversion between wegen_jax and PyTorch layouts.

    from wegen_jax import convert
    model = convert.load_hf_llm("path/to/hf_dir")      # NNX LLM with weights
    logits = model(input_ids)                           # [batch, seq, vocab]
    convert.save_hf_llm(model, "out_dir")              # AutoModelForCausalLM loads it

CLI: `python -m wegen_jax.convert --help`.
"""

from wegen_jax.convert.checkpoint_io import (
  CheckpointError,
  CheckpointFormatError,
  NonFiniteWeightsWarning,
  read_state_dict,
  save_safetensors,
  save_state_dict,
)
from wegen_jax.convert.hf_llm import config_from_hf, hf_config, load_hf_llm, save_hf_llm
from wegen_jax.convert.diffusers import load_diffusers_unet, load_diffusers_vae, save_diffusers_unet, save_diffusers_vae
from wegen_jax.convert.hf_clip import load_hf_clip, save_hf_clip
from wegen_jax.convert.timm_eva import export_timm_eva, export_wegen_projectors, load_timm_eva, load_wegen_projectors
from wegen_jax.convert.hf_qwen2_5_vl import load_hf_qwen2_5_vl, save_hf_qwen2_5_vl
