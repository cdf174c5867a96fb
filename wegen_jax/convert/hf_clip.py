"""transformers `CLIPModel` <-> wegen_jax CLIPModel: config translation and the parameter table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flax import nnx

from wegen_jax.convert.checkpoint_io import CheckpointError, read_state_dict, save_state_dict, write_json_config
from wegen_jax.convert.hf_llm import read_hf_config
from wegen_jax.convert.mapping import CONV, COPY, LINEAR, Rule, export_state_dict, load_state_dict
from wegen_jax.models.clip import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig


def config_from_hf(d: Mapping[str, Any], **overrides) -> CLIPConfig:
  """CLIPConfig from a `CLIPModel` config.json dict (transformers defaults where keys are absent)."""
  if d.get("model_type") not in ("clip", None):
    raise CheckpointError(f"model_type={d.get('model_type')!r} is not a CLIPModel config")
  t, v = dict(d.get("text_config") or {}), dict(d.get("vision_config") or {})
  for part, sub in (("text", t), ("vision", v)):
    if sub.get("hidden_size", 1) % sub.get("num_attention_heads", 1):
      raise CheckpointError(f"{part} hidden_size is not a multiple of num_attention_heads")
  text = CLIPTextConfig(
    vocab_size=t.get("vocab_size", 49408),
    hidden_size=t.get("hidden_size", 512),
    num_layers=t.get("num_hidden_layers", 12),
    num_heads=t.get("num_attention_heads", 8),
    intermediate_size=t.get("intermediate_size", 2048),
    max_position_embeddings=t.get("max_position_embeddings", 77),
    activation=t.get("hidden_act", "quick_gelu"),
    norm_eps=t.get("layer_norm_eps", 1e-5),
    eos_token_id=t.get("eos_token_id", 49407),
  )
  vision = CLIPVisionConfig(
    image_size=v.get("image_size", 224),
    patch_size=v.get("patch_size", 32),
    num_channels=v.get("num_channels", 3),
    hidden_size=v.get("hidden_size", 768),
    num_layers=v.get("num_hidden_layers", 12),
    num_heads=v.get("num_attention_heads", 12),
    intermediate_size=v.get("intermediate_size", 3072),
    activation=v.get("hidden_act", "quick_gelu"),
    norm_eps=v.get("layer_norm_eps", 1e-5),
  )
  return CLIPConfig(
    text=text,
    vision=vision,
    projection_dim=d.get("projection_dim", 512),
    logit_scale_init=d.get("logit_scale_init_value", 2.6592),
  ).replace(**overrides)


def hf_config(cfg: CLIPConfig) -> dict:
  """config.json for transformers `CLIPModel`."""
  t, v = cfg.text, cfg.vision
  return {
    "architectures": ["CLIPModel"],
    "model_type": "clip",
    "projection_dim": cfg.projection_dim,
    "logit_scale_init_value": cfg.logit_scale_init,
    "torch_dtype": "float32",
    "text_config": {
      "model_type": "clip_text_model",
      "vocab_size": t.vocab_size,
      "hidden_size": t.hidden_size,
      "intermediate_size": t.intermediate_size,
      "num_hidden_layers": t.num_layers,
      "num_attention_heads": t.num_heads,
      "max_position_embeddings": t.max_position_embeddings,
      "hidden_act": t.activation,
      "layer_norm_eps": t.norm_eps,
      "projection_dim": cfg.projection_dim,
      "eos_token_id": t.eos_token_id,
      "attention_dropout": 0.0,
    },
    "vision_config": {
      "model_type": "clip_vision_model",
      "image_size": v.image_size,
      "patch_size": v.patch_size,
      "num_channels": v.num_channels,
      "hidden_size": v.hidden_size,
      "intermediate_size": v.intermediate_size,
      "num_hidden_layers": v.num_layers,
      "num_attention_heads": v.num_heads,
      "hidden_act": v.activation,
      "layer_norm_eps": v.norm_eps,
      "projection_dim": cfg.projection_dim,
      "attention_dropout": 0.0,
    },
  }


def _encoder_rules(ours: str, theirs: str) -> list[Rule]:
  o, t = ours + "blocks.{i}.", theirs + "encoder.layers.{i}."
  out = [
    Rule(o + "attn.o.kernel", t + "self_attn.out_proj.weight", LINEAR),
    Rule(o + "attn.o.bias", t + "self_attn.out_proj.bias"),
  ]
  out += [Rule(o + f"attn.{n}.kernel", t + f"self_attn.{n}_proj.weight", LINEAR) for n in "qkv"]
  out += [Rule(o + f"attn.{n}.bias", t + f"self_attn.{n}_proj.bias") for n in "qkv"]
  out += [Rule(o + f"norm{k}.scale", t + f"layer_norm{k}.weight") for k in "12"]
  out += [Rule(o + f"norm{k}.bias", t + f"layer_norm{k}.bias") for k in "12"]
  out += [Rule(o + f"mlp.{n}.kernel", t + f"mlp.{n}.weight", LINEAR) for n in ("fc1", "fc2")]
  out += [Rule(o + f"mlp.{n}.bias", t + f"mlp.{n}.bias") for n in ("fc1", "fc2")]
  return out


def rules() -> list[Rule]:
  t, v = "text_model.", "vision_model."
  out = [
    Rule(t + "token_embedding.embedding", t + "embeddings.token_embedding.weight"),
    Rule(t + "position_embedding", t + "embeddings.position_embedding.weight"),
    Rule(t + "final_norm.scale", t + "final_layer_norm.weight"),
    Rule(t + "final_norm.bias", t + "final_layer_norm.bias"),
    Rule(v + "patch_embed.kernel", v + "embeddings.patch_embedding.weight", CONV),
    Rule(v + "class_embedding", v + "embeddings.class_embedding"),
    Rule(v + "position_embedding", v + "embeddings.position_embedding.weight"),
    Rule(v + "pre_norm.scale", v + "pre_layrnorm.weight"),
    Rule(v + "pre_norm.bias", v + "pre_layrnorm.bias"),
    Rule(v + "post_norm.scale", v + "post_layernorm.weight"),
    Rule(v + "post_norm.bias", v + "post_layernorm.bias"),
    Rule("text_projection.kernel", "text_projection.weight", LINEAR),
    Rule("visual_projection.kernel", "visual_projection.weight", LINEAR),
    Rule("logit_scale", "logit_scale", COPY),
  ]
  return out + _encoder_rules(t, t) + _encoder_rules(v, v)


def load_hf_clip(path: str | os.PathLike, **config_overrides) -> CLIPModel:
  """wegen_jax CLIPModel with the weights of a transformers `CLIPModel` directory
  (config.json + model.safetensors or pytorch_model.bin).

  Returns a CLIPModel: `get_text_features(input_ids[, attention_mask])` and
  `get_image_features(pixel_values NCHW)` give the projected features [B, projection_dim]
  (the tensor transformers 5 returns as `.pooler_output`); see models.clip for the rest.
  config_overrides: CLIPConfig fields (e.g. dtype='bfloat16').
  """
  cfg = config_from_hf(read_hf_config(path), **config_overrides)
  model = nnx.eval_shape(lambda: CLIPModel(cfg, rngs=nnx.Rngs(0)))
  return load_state_dict(
    model, read_state_dict(path), rules(), ignore=[r"position_ids$"], dtype=np.dtype(cfg.param_dtype), source=str(path)
  )


def save_hf_clip(model: CLIPModel, path: str | os.PathLike, *, dtype=None) -> None:
  """Writes an HF directory that `transformers.CLIPModel.from_pretrained` loads."""
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  save_state_dict(export_state_dict(model, rules(), dtype=dtype), path)
  config = hf_config(model.cfg)
  if dtype is not None:
    config["torch_dtype"] = np.dtype(dtype).name
  write_json_config(path, config)
