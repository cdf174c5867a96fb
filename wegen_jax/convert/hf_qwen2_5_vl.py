"""HF Qwen2_5_VLForConditionalGeneration <-> wegen_jax Qwen2_5_VL: config translation and parameter table.

    model = convert.load_hf_qwen2_5_vl("Qwen2.5-VL-3B-Instruct")   # config.json + safetensors
    convert.save_hf_qwen2_5_vl(model, "out")                       # from_pretrained loads it

Reads both key layouts: transformers 5's (`model.visual.`, `model.language_model.`) and the
released checkpoints' (`visual.`, `model.`); writes transformers 5's. The text part reuses
hf_llm's Qwen2 table. The vision attention's fused qkv is split into our q/k/v on load and
concatenated again on export.
"""

from __future__ import annotations

import collections
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flax import nnx

from wegen_jax.convert import hf_llm
from wegen_jax.convert.checkpoint_io import (
  CheckpointError,
  read_json_config,
  read_state_dict,
  save_state_dict,
  write_json_config,
)
from wegen_jax.convert.mapping import LINEAR, Rule, Transform, export_state_dict, load_state_dict, param_shardings
from wegen_jax.models.qwen2_5_vl import Qwen2_5_VL, Qwen2_5_VLConfig, QwenVisionConfig

_VISION_RUNTIME = ("dtype", "param_dtype", "attention_impl")  # overrides that apply to the tower too
_QKV = re.compile(r"attn\.qkv\.(weight|bias)$")


def config_from_hf(d: Mapping[str, Any], **overrides) -> Qwen2_5_VLConfig:
  """Qwen2_5_VLConfig from a config.json dict; overrides are LLMConfig fields (dtype, param_dtype
  and attention_impl also apply to the vision tower)."""
  if d.get("model_type") != "qwen2_5_vl":
    raise CheckpointError(f"expected a Qwen2.5-VL config (model_type 'qwen2_5_vl'), got {d.get('model_type')!r}")
  text = hf_llm.config_from_hf(d, **overrides)
  v = dict(d.get("vision_config") or {})
  rope = v.get("rope_parameters") or {}
  vision = QwenVisionConfig(
    depth=v["depth"],
    hidden_size=v["hidden_size"],
    intermediate_size=v["intermediate_size"],
    num_heads=v["num_heads"],
    out_hidden_size=v["out_hidden_size"],
    in_channels=v.get("in_channels", v.get("in_chans", 3)),
    patch_size=v.get("patch_size", 14),
    temporal_patch_size=v.get("temporal_patch_size", 2),
    spatial_merge_size=v.get("spatial_merge_size", 2),
    window_size=v.get("window_size", 112),
    fullatt_block_indexes=v.get("fullatt_block_indexes", (7, 15, 23, 31)),
    hidden_act=v.get("hidden_act", "silu"),
    rope_theta=float(rope.get("rope_theta", v.get("rope_theta", 10000.0))),
    **{k: overrides[k] for k in _VISION_RUNTIME if k in overrides},
  )
  ids = {
    k: d[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id") if k in d
  }
  return Qwen2_5_VLConfig(text, vision, **ids)


def hf_config(cfg: Qwen2_5_VLConfig) -> dict:
  """config.json for Qwen2_5_VLForConditionalGeneration (transformers 5 layout)."""
  t, v = cfg.text, cfg.vision
  if t.dim_per_head * t.num_heads != t.hidden_size:
    raise CheckpointError(f"transformers' Qwen2.5-VL needs head_dim = hidden_size / num_heads, got {t.dim_per_head}")
  text = hf_llm.hf_config(t)
  for k in ("architectures", "rope_scaling", "rope_theta", "head_dim", "torch_dtype", "tie_word_embeddings"):
    text.pop(k, None)
  text.update(
    model_type="qwen2_5_vl_text",
    rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": list(t.mrope_section)},
    bos_token_id=None,
    eos_token_id=None,
  )
  vision = {
    "model_type": "qwen2_5_vl_vision",
    "depth": v.depth,
    "hidden_size": v.hidden_size,
    "intermediate_size": v.intermediate_size,
    "num_heads": v.num_heads,
    "out_hidden_size": v.out_hidden_size,
    "in_channels": v.in_channels,
    "patch_size": v.patch_size,
    "temporal_patch_size": v.temporal_patch_size,
    "spatial_merge_size": v.spatial_merge_size,
    "window_size": v.window_size,
    "fullatt_block_indexes": list(v.fullatt_block_indexes),
    "hidden_act": v.hidden_act,
    "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
  }
  if v.norm_eps != 1e-6:
    raise CheckpointError("transformers' Qwen2.5-VL vision tower fixes its RMSNorm eps at 1e-6")
  return {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "text_config": text,
    "vision_config": vision,
    "image_token_id": cfg.image_token_id,
    "video_token_id": cfg.video_token_id,
    "vision_start_token_id": cfg.vision_start_token_id,
    "vision_end_token_id": cfg.vision_end_token_id,
    "tie_word_embeddings": t.tie_word_embeddings,
    "torch_dtype": "float32",
  }


def _patch_transform(v: QwenVisionConfig) -> Transform:
  shape = (v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
  return Transform(
    lambda w: w.reshape(w.shape[0], -1).T,
    lambda k: k.T.reshape(shape),
    "Conv3d [E, C, T, P, P] -> flattened patch matmul [C*T*P*P, E]",
  )


def rules(cfg: Qwen2_5_VLConfig, vision_prefix: str = "model.visual.", text_prefix: str = "model.language_model."):
  """Parameter table; the vision q/k/v map to `...attn.qkv.weight:q` etc. (slices of the fused qkv)."""
  v, b, t = vision_prefix, "visual.blocks.{i}.", vision_prefix + "blocks.{i}."
  out = [
    Rule("visual.patch_embed.kernel", v + "patch_embed.proj.weight", _patch_transform(cfg.vision)),
    Rule(b + "norm1.scale", t + "norm1.weight"),
    Rule(b + "norm2.scale", t + "norm2.weight"),
    Rule(b + "attn.o.kernel", t + "attn.proj.weight", LINEAR),
    Rule(b + "attn.o.bias", t + "attn.proj.bias"),
    Rule("visual.merger.ln_q.scale", v + "merger.ln_q.weight"),
    Rule("visual.merger.mlp.fc1.kernel", v + "merger.mlp.0.weight", LINEAR),
    Rule("visual.merger.mlp.fc1.bias", v + "merger.mlp.0.bias"),
    Rule("visual.merger.mlp.fc2.kernel", v + "merger.mlp.2.weight", LINEAR),
    Rule("visual.merger.mlp.fc2.bias", v + "merger.mlp.2.bias"),
  ]
  out += [Rule(b + f"attn.{n}.kernel", t + f"attn.qkv.weight:{n}", LINEAR) for n in "qkv"]
  out += [Rule(b + f"attn.{n}.bias", t + f"attn.qkv.bias:{n}") for n in "qkv"]
  for n in ("gate", "up", "down"):
    out += [
      Rule(b + f"mlp.{n}.kernel", t + f"mlp.{n}_proj.weight", LINEAR),
      Rule(b + f"mlp.{n}.bias", t + f"mlp.{n}_proj.bias"),
    ]
  out += [Rule("language_model." + r.ours, r.theirs, r.transform) for r in hf_llm.rules(cfg.text, text_prefix)]
  return out


def _split_qkv(state_dict: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
  """The state dict plus `<qkv key>:q|k|v` slices of each fused vision qkv tensor."""
  parts = {}
  for key in state_dict:
    if _QKV.search(key):
      for name, part in zip("qkv", np.split(np.asarray(state_dict[key]), 3, axis=0)):
        parts[f"{key}:{name}"] = part
  return collections.ChainMap(parts, state_dict)


def _join_qkv(state_dict: dict) -> dict:
  for key in [k for k in state_dict if k.endswith(":q")]:
    base = key[:-2]
    state_dict[base] = np.concatenate([state_dict.pop(f"{base}:{n}") for n in "qkv"], axis=0)
  return state_dict


def fill_hf_qwen2_5_vl(
  model: Qwen2_5_VL, state_dict: Mapping[str, np.ndarray], *, shardings=None, dtype=None, source="state dict"
):
  """Fills a (concrete or eval_shape) Qwen2_5_VL in place from an HF state dict of either key layout."""
  cfg = model.cfg
  vision_prefix = "model.visual." if "model.visual.patch_embed.proj.weight" in state_dict else "visual."
  text_prefix = hf_llm._decoder_prefix(state_dict, cfg.text)
  ignore = [r"rotary_emb\.inv_freq$", _QKV.pattern]
  if cfg.text.tie_word_embeddings:
    ignore.append(r"^lm_head\.weight$")
  load_state_dict(
    model,
    _split_qkv(state_dict),
    rules(cfg, vision_prefix, text_prefix),
    ignore=ignore,
    dtype=dtype,
    shardings=shardings,
    source=source,
  )
  return model


def load_hf_qwen2_5_vl(path: str | os.PathLike, *, mesh=None, sharding_rules=None, **config_overrides) -> Qwen2_5_VL:
  """Qwen2_5_VL with the weights of an HF directory (config.json + safetensors, sharded or not).

  config_overrides: LLMConfig fields (e.g. dtype='bfloat16'). With `mesh`, each tensor goes
  straight to its sharding."""
  cfg = config_from_hf(
    read_json_config(path, "a Qwen2.5-VL model directory (config.json + safetensors)"), **config_overrides
  )
  state_dict = read_state_dict(path)
  model = nnx.eval_shape(lambda: Qwen2_5_VL(cfg, rngs=nnx.Rngs(0)))
  shardings = param_shardings(model, mesh, sharding_rules)
  return fill_hf_qwen2_5_vl(
    model, state_dict, shardings=shardings, dtype=np.dtype(cfg.text.param_dtype), source=str(path)
  )


def save_hf_qwen2_5_vl(model: Qwen2_5_VL, path: str | os.PathLike, *, dtype=None) -> None:
  """Writes an HF directory (config.json + model.safetensors) that
  Qwen2_5_VLForConditionalGeneration.from_pretrained loads."""
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  cfg = model.cfg
  config = hf_config(cfg)  # first: it says why a model cannot be exported
  state_dict = _join_qkv(export_state_dict(model, rules(cfg), dtype=dtype))
  if cfg.text.tie_word_embeddings:
    state_dict["lm_head.weight"] = state_dict["model.language_model.embed_tokens.weight"]
  if dtype is not None:
    config["torch_dtype"] = np.dtype(dtype).name
  save_state_dict(state_dict, path)
  write_json_config(path, config)
