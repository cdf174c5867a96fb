"""HF transformers <-> wegen_jax LLM: config translation and one parameter table per family.

Supported: LlamaForCausalLM (Llama-2/3, incl. llama3 rope scaling), Qwen2ForCausalLM
(Qwen2/2.5), the text model of Qwen2_5_VLForConditionalGeneration (M-RoPE; loaded from
either the flat or the `model.language_model.` key layout), and OPTForCausalLM.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flax import nnx

from wegen_jax.convert.checkpoint_io import (
  CheckpointError,
  read_json_config,
  read_state_dict,
  save_state_dict,
  state_dict_and_source,
  write_json_config,
)
from wegen_jax.convert.mapping import LINEAR, Rule, export_state_dict, load_state_dict, param_shardings
from wegen_jax.models.llm import LLM, LLMConfig

SUPPORTED = ("llama", "qwen2", "qwen2_5_vl", "opt")


def _rope_params(d: Mapping[str, Any]) -> tuple[float, dict | None]:
  """(theta, scaling) from either transformers 5 `rope_parameters` or 4.x `rope_theta`/`rope_scaling`."""
  params = dict(d.get("rope_parameters") or {})
  legacy = dict(d.get("rope_scaling") or {})
  theta = params.pop("rope_theta", d.get("rope_theta", 10000.0))
  scaling = params or legacy or None
  if scaling and scaling.get("rope_type", scaling.get("type")) == "default":
    scaling = None
  return float(theta), scaling


def config_from_hf(d: Mapping[str, Any], **overrides) -> LLMConfig:
  """LLMConfig from an HF config.json dict."""
  model_type = d.get("model_type")
  if model_type == "qwen2_5_vl":
    text = dict(d.get("text_config") or d)  # transformers 5 nests the text model's config
    for k in ("vocab_size", "tie_word_embeddings"):
      text.setdefault(k, d.get(k))
    theta, _ = _rope_params(text)
    section = (text.get("rope_parameters") or text.get("rope_scaling") or {}).get("mrope_section")
    cfg = _llama_like(text, "qwen2", qkv_bias=True, theta=theta, scaling=None)
    return cfg.replace(mrope_section=tuple(section) if section else None, **overrides)
  if model_type in ("llama", "qwen2"):
    if d.get("use_sliding_window"):
      raise CheckpointError("Qwen2 sliding-window attention (use_sliding_window=true) is not supported")
    theta, scaling = _rope_params(d)
    qkv_bias = True if model_type == "qwen2" else bool(d.get("attention_bias", False))
    return _llama_like(d, model_type, qkv_bias=qkv_bias, theta=theta, scaling=scaling).replace(**overrides)
  if model_type == "opt":
    if not d.get("layer_norm_elementwise_affine", True):
      raise CheckpointError("OPT with layer_norm_elementwise_affine=false is not supported")
    hidden = d["hidden_size"]
    bias = d.get("enable_bias", True)
    pre = d.get("do_layer_norm_before", True)
    return LLMConfig(
      family="opt",
      vocab_size=d["vocab_size"],
      hidden_size=hidden,
      intermediate_size=d["ffn_dim"],
      num_layers=d["num_hidden_layers"],
      num_heads=d["num_attention_heads"],
      norm="layer",
      norm_eps=1e-5,
      norm_bias=True,
      pre_norm=pre,
      final_norm=pre and not d.get("_remove_final_layer_norm", False),
      activation=d.get("activation_function", "relu"),
      gated_mlp=False,
      qkv_bias=bias,
      out_bias=bias,
      mlp_bias=bias,
      position_embedding="learned",
      max_position_embeddings=d["max_position_embeddings"],
      word_embed_proj_dim=d.get("word_embed_proj_dim") if d.get("word_embed_proj_dim") != hidden else None,
      tie_word_embeddings=d.get("tie_word_embeddings", True),
    ).replace(**overrides)
  raise CheckpointError(f"unsupported architecture model_type={model_type!r}; supported: {SUPPORTED}")


def _llama_like(d, family, *, qkv_bias, theta, scaling) -> LLMConfig:
  return LLMConfig(
    family=family,
    vocab_size=d["vocab_size"],
    hidden_size=d["hidden_size"],
    intermediate_size=d["intermediate_size"],
    num_layers=d["num_hidden_layers"],
    num_heads=d["num_attention_heads"],
    num_kv_heads=d.get("num_key_value_heads"),
    head_dim=d.get("head_dim"),
    norm="rms",
    norm_eps=d.get("rms_norm_eps", 1e-6),
    activation=d.get("hidden_act", "silu"),
    gated_mlp=True,
    qkv_bias=qkv_bias,
    out_bias=bool(d.get("attention_bias", False)) if family == "llama" else False,
    mlp_bias=bool(d.get("mlp_bias", False)),
    rope_theta=theta,
    rope_scaling=scaling,
    max_position_embeddings=d.get("max_position_embeddings", 4096),
    tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
  )


def hf_config(cfg: LLMConfig) -> dict:
  """config.json for the HF class of cfg.family (Qwen2.5-VL text exports as plain Qwen2)."""
  if cfg.short_conv:
    raise CheckpointError(
      f"this LLM has short convolutions (short_conv={cfg.short_conv}), which no transformers class has; "
      "it can be saved as an Orbax checkpoint (training runs) but not exported to an HF layout. "
      "Train with short_conv=0 for a model that exports."
    )
  if cfg.family == "opt":
    return {
      "architectures": ["OPTForCausalLM"],
      "model_type": "opt",
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "ffn_dim": cfg.intermediate_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "do_layer_norm_before": cfg.pre_norm,
      "_remove_final_layer_norm": cfg.pre_norm and not cfg.final_norm,
      "activation_function": cfg.activation,
      "enable_bias": cfg.qkv_bias,
      "layer_norm_elementwise_affine": True,
      "max_position_embeddings": cfg.max_position_embeddings,
      "word_embed_proj_dim": cfg.embed_dim,
      "tie_word_embeddings": cfg.tie_word_embeddings,
      "dropout": 0.0,
      "attention_dropout": 0.0,
      "pad_token_id": 1,
      "bos_token_id": 2,
      "eos_token_id": 2,
    }
  if cfg.family not in ("llama", "qwen2"):
    raise CheckpointError(f"cannot export family {cfg.family!r}; supported: llama, qwen2, opt")
  rope = {"rope_theta": cfg.rope_theta, "rope_type": "default", **dict(cfg.rope_scaling or {})}
  out = {
    "architectures": ["LlamaForCausalLM" if cfg.family == "llama" else "Qwen2ForCausalLM"],
    "model_type": cfg.family,
    "vocab_size": cfg.vocab_size,
    "hidden_size": cfg.hidden_size,
    "intermediate_size": cfg.intermediate_size,
    "num_hidden_layers": cfg.num_layers,
    "num_attention_heads": cfg.num_heads,
    "num_key_value_heads": cfg.kv_heads,
    "head_dim": cfg.dim_per_head,
    "rms_norm_eps": cfg.norm_eps,
    "hidden_act": cfg.activation,
    "max_position_embeddings": cfg.max_position_embeddings,
    "tie_word_embeddings": cfg.tie_word_embeddings,
    "rope_theta": cfg.rope_theta,
    "rope_parameters": rope,
    "rope_scaling": cfg.rope_scaling and dict(cfg.rope_scaling),
    "torch_dtype": "float32",
  }
  if cfg.family == "llama":
    out.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
    if cfg.qkv_bias != cfg.out_bias:
      raise CheckpointError("Llama's attention_bias covers q, k, v and o together")
  return out


def rules(cfg: LLMConfig, prefix: str = "model.") -> list[Rule]:
  """Parameter table for cfg.family; `prefix` is where the decoder lives in their keys."""
  L = "layers.{i}."
  if cfg.family == "opt":
    p, t = prefix + "decoder.", prefix + "decoder.layers.{i}."
    out = [
      Rule("embed.embedding", p + "embed_tokens.weight"),
      Rule("pos_embed.embedding", p + "embed_positions.weight"),
      Rule("proj_in.kernel", p + "project_in.weight", LINEAR),
      Rule("proj_out.kernel", p + "project_out.weight", LINEAR),
      Rule("final_norm.scale", p + "final_layer_norm.weight"),
      Rule("final_norm.bias", p + "final_layer_norm.bias"),
      Rule(L + "attn_norm.scale", t + "self_attn_layer_norm.weight"),
      Rule(L + "attn_norm.bias", t + "self_attn_layer_norm.bias"),
      Rule(L + "mlp_norm.scale", t + "final_layer_norm.weight"),
      Rule(L + "mlp_norm.bias", t + "final_layer_norm.bias"),
      Rule(L + "attn.o.kernel", t + "self_attn.out_proj.weight", LINEAR),
      Rule(L + "attn.o.bias", t + "self_attn.out_proj.bias"),
      Rule(L + "mlp.fc1.kernel", t + "fc1.weight", LINEAR),
      Rule(L + "mlp.fc1.bias", t + "fc1.bias"),
      Rule(L + "mlp.fc2.kernel", t + "fc2.weight", LINEAR),
      Rule(L + "mlp.fc2.bias", t + "fc2.bias"),
    ]
    out += [Rule(L + f"attn.{n}.kernel", t + f"self_attn.{n}_proj.weight", LINEAR) for n in "qkv"]
    out += [Rule(L + f"attn.{n}.bias", t + f"self_attn.{n}_proj.bias") for n in "qkv"]
  else:
    t = prefix + "layers.{i}."
    out = [
      Rule("embed.embedding", prefix + "embed_tokens.weight"),
      Rule("final_norm.scale", prefix + "norm.weight"),
      Rule(L + "attn_norm.scale", t + "input_layernorm.weight"),
      Rule(L + "mlp_norm.scale", t + "post_attention_layernorm.weight"),
      Rule(L + "attn.o.kernel", t + "self_attn.o_proj.weight", LINEAR),
      Rule(L + "attn.o.bias", t + "self_attn.o_proj.bias"),
    ]
    out += [Rule(L + f"attn.{n}.kernel", t + f"self_attn.{n}_proj.weight", LINEAR) for n in "qkv"]
    out += [Rule(L + f"attn.{n}.bias", t + f"self_attn.{n}_proj.bias") for n in "qkv"]
    out += [Rule(L + f"mlp.{n}.kernel", t + f"mlp.{n}_proj.weight", LINEAR) for n in ("gate", "up", "down")]
    out += [Rule(L + f"mlp.{n}.bias", t + f"mlp.{n}_proj.bias") for n in ("gate", "up", "down")]
  out.append(Rule("lm_head.kernel", "lm_head.weight", LINEAR))
  return out


def read_hf_config(path: str | os.PathLike) -> dict:
  return read_json_config(path, "an HF model directory (config.json + model.safetensors)")


def _decoder_prefix(state_dict, cfg: LLMConfig) -> str:
  candidates = ("model.language_model.", "model.", "language_model.model.", "")
  probe = "decoder.embed_tokens.weight" if cfg.family == "opt" else "embed_tokens.weight"
  for prefix in candidates:
    if prefix + probe in state_dict:
      return prefix
  raise CheckpointError(
    f"cannot find the token embedding ({probe!r} under any of {candidates}) "
    "in the checkpoint: is this a causal LM checkpoint?"
  )


def load_hf_llm(path: str | os.PathLike, *, mesh=None, sharding_rules=None, **config_overrides) -> LLM:
  """NNX LLM with the weights of an HF directory (config.json + safetensors, sharded or not).

  config_overrides: LLMConfig fields (e.g. dtype='bfloat16', remat='full').
  With `mesh`, each tensor goes straight to its sharding (no full host copy on device 0).
  """
  cfg = config_from_hf(read_hf_config(path), **config_overrides)
  state_dict = read_state_dict(path)
  model = nnx.eval_shape(lambda: LLM(cfg, rngs=nnx.Rngs(0)))
  shardings = param_shardings(model, mesh, sharding_rules)
  return fill_hf_llm(model, state_dict, shardings=shardings, dtype=np.dtype(cfg.param_dtype), source=str(path))


# Our embedding [V, E] and head [E, V]: the vocabulary axis along which a checkpoint may be smaller.
VOCAB_AXES = {r"^embed\.embedding$": 0, r"^lm_head\.kernel$": -1}


def fill_hf_llm(
  model: LLM, state_dict_or_path, *, shardings=None, dtype=None, grow_vocab: bool = False, source: str | None = None
) -> LLM:
  """Fills an existing LLM in place from an HF state dict or directory. grow_vocab: a checkpoint
  with fewer token rows (Llama-2's 32000 for WeGen's 32330) fills the first rows; the added
  tokens keep their current values, as HF resize_token_embeddings leaves them."""
  cfg = model.cfg
  state_dict, read_from = state_dict_and_source(state_dict_or_path)
  source = source or read_from
  # Buffers some checkpoints carry, and the vision tower of a Qwen2.5-VL checkpoint.
  ignore = [r"rotary_emb\.inv_freq$", r"(^|\.)visual\."]
  if cfg.tie_word_embeddings:
    ignore.append(r"^lm_head\.weight$")
  load_state_dict(
    model,
    state_dict,
    rules(cfg, _decoder_prefix(state_dict, cfg)),
    ignore=ignore,
    dtype=dtype,
    shardings=shardings,
    source=source,
    grow=VOCAB_AXES if grow_vocab else None,
  )
  return model


def save_hf_llm(model: LLM, path: str | os.PathLike, *, dtype=None) -> None:
  """Writes an HF directory (config.json + model.safetensors) for AutoModelForCausalLM."""
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  cfg = model.cfg
  config = hf_config(cfg)  # first: it says why a model cannot be exported
  state_dict = export_state_dict(model, rules(cfg), dtype=dtype)
  if cfg.tie_word_embeddings:
    emb = "model.decoder.embed_tokens.weight" if cfg.family == "opt" else "model.embed_tokens.weight"
    state_dict["lm_head.weight"] = state_dict[emb]
  if dtype is not None:
    config["torch_dtype"] = np.dtype(dtype).name
  save_state_dict(state_dict, path)
  write_json_config(path, config)
