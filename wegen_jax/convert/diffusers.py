"""diffusers <-> wegen_jax: UNet2DConditionModel and AutoencoderKL (config translation and tables).

    unet = convert.load_diffusers_unet("sdxl/unet")       # config.json + diffusion_pytorch_model.safetensors
    convert.save_diffusers_unet(unet, "out/unet")        # UNet2DConditionModel.from_pretrained loads it
    vae = convert.load_diffusers_vae("sdxl/vae")

Our module names mirror diffusers, so the tables only rename leaves (kernel/scale -> weight,
attention q/k/v/o -> to_q/to_k/to_v/to_out.0, GEGLU proj/out -> ff.net.0.proj/ff.net.2) and
transpose layouts (Linear [out,in] <-> [in,out]; conv OIHW <-> HWIO).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flax import nnx

from wegen_jax.convert.checkpoint_io import (
  CheckpointError,
  read_json_config,
  read_state_dict,
  save_state_dict,
  write_json_config,
)
from wegen_jax.convert.cli import command, src_out_args
from wegen_jax.convert.mapping import CONV, LINEAR, Rule, Transform, export_state_dict, load_state_dict
from wegen_jax.models.unet import UNet2DConditionModel, UNetConfig
from wegen_jax.models.vae import AutoencoderKL, VAEConfig

WEIGHTS = "diffusion_pytorch_model.safetensors"
# A 1x1 conv stored as [out, in, 1, 1] by PyTorch but used as a Linear [in, out] by us never
# happens: proj_in/out are Dense exactly when use_linear_projection, as in diffusers.
_UNSUPPORTED_UNET = {
  "class_embed_type": None,
  "encoder_hid_dim_type": None,
  "time_cond_proj_dim": None,
  "timestep_post_act": None,
  "dual_cross_attention": False,
  "only_cross_attention": False,
  "resnet_time_scale_shift": "default",
  "time_embedding_type": "positional",
  "class_embeddings_concat": False,
  "cross_attention_norm": None,
  "resnet_skip_time_act": False,
  "num_attention_heads": None,
}


def _per_block(value, n: int, name: str) -> tuple:
  if isinstance(value, (list, tuple)):
    if len(value) != n:
      raise CheckpointError(f"UNet config: {name} has {len(value)} entries for {n} blocks")
    return tuple(value)
  return (value,) * n


def _per_layer(value, n_layers: int) -> tuple[int, ...]:
  return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),) * n_layers


def unet_config_from_diffusers(d: Mapping[str, Any], **overrides) -> UNetConfig:
  """UNetConfig from a diffusers UNet2DConditionModel config.json dict (diffusers defaults fill gaps)."""
  for key, ok in _UNSUPPORTED_UNET.items():
    value = d.get(key, ok)
    if value != ok and not (key == "only_cross_attention" and not any(np.atleast_1d(value))):
      raise CheckpointError(f"UNet config: {key}={value!r} is not supported (only {ok!r})")
  if d.get("attention_type", "default") not in ("default", "gated"):
    raise CheckpointError(
      f"UNet config: attention_type={d['attention_type']!r} is not supported ('default', or 'gated' for GLIGEN)"
    )
  if d.get("addition_embed_type") not in (None, "text_time"):
    raise CheckpointError(
      f"UNet config: addition_embed_type={d['addition_embed_type']!r} is not supported (None or 'text_time')"
    )
  boc = tuple(d.get("block_out_channels", (320, 640, 1280, 1280)))
  n = len(boc)
  down = tuple(d.get("down_block_types", UNetConfig.down_block_types))
  up = tuple(d.get("up_block_types", UNetConfig.up_block_types))
  layers = tuple(int(x) for x in _per_block(d.get("layers_per_block", 2), n, "layers_per_block"))
  # diffusers' historical naming: attention_head_dim is the number of heads in these blocks.
  heads = tuple(int(x) for x in _per_block(d.get("attention_head_dim", 8), n, "attention_head_dim"))
  cross = tuple(int(x) for x in _per_block(d.get("cross_attention_dim", 1280), n, "cross_attention_dim"))
  tl = d.get("transformer_layers_per_block", 1)
  tl = _per_block(tl, n, "transformer_layers_per_block")
  down_tl = tuple(_per_layer(tl[i], layers[i]) for i in range(n))
  rev = d.get("reverse_transformer_layers_per_block")
  if rev is None:
    if any(isinstance(t, (list, tuple)) for t in tl):
      raise CheckpointError(
        "UNet config: per-layer transformer_layers_per_block needs reverse_transformer_layers_per_block"
      )
    rev = list(reversed(tl))
  up_tl = tuple(_per_layer(rev[i], layers[n - 1 - i] + 1) for i in range(n))
  mid_tl = _per_layer(tl[-1], 1)[0]
  cfg = UNetConfig(
    in_channels=d.get("in_channels", 4),
    out_channels=d.get("out_channels", 4),
    block_out_channels=boc,
    down_block_types=down,
    up_block_types=up,
    mid_block_type=d.get("mid_block_type", "UNetMidBlock2DCrossAttn"),
    layers_per_block=layers,
    down_transformer_layers=down_tl,
    up_transformer_layers=up_tl,
    mid_transformer_layers=mid_tl,
    num_attention_heads=heads,
    cross_attention_dim=cross,
    use_linear_projection=bool(d.get("use_linear_projection", False)),
    norm_num_groups=d.get("norm_num_groups", 32),
    norm_eps=d.get("norm_eps", 1e-5),
    act_fn=d.get("act_fn", "silu"),
    flip_sin_to_cos=d.get("flip_sin_to_cos", True),
    freq_shift=d.get("freq_shift", 0),
    downsample_padding=d.get("downsample_padding", 1),
    mid_block_scale_factor=d.get("mid_block_scale_factor", 1.0),
    resnet_out_scale_factor=d.get("resnet_out_scale_factor", 1.0),
    center_input_sample=d.get("center_input_sample", False),
    conv_in_kernel=d.get("conv_in_kernel", 3),
    conv_out_kernel=d.get("conv_out_kernel", 3),
    time_embedding_dim=d.get("time_embedding_dim"),
    time_embedding_act_fn=d.get("time_embedding_act_fn"),
    addition_embed_type=d.get("addition_embed_type"),
    addition_time_embed_dim=d.get("addition_time_embed_dim"),
    projection_class_embeddings_input_dim=d.get("projection_class_embeddings_input_dim"),
    upcast_attention=d.get("upcast_attention", False),
    sample_size=d.get("sample_size"),
    attention_type=d.get("attention_type", "default"),
  )
  if d.get("norm_num_groups", 32) is None:
    raise CheckpointError("UNet config: norm_num_groups=None is not supported")
  return cfg.replace(**overrides)


def unet_config_to_diffusers(cfg: UNetConfig) -> dict:
  """config.json for diffusers' UNet2DConditionModel."""
  uniform = all(len(set(t)) == 1 for t in cfg.down_transformer_layers + cfg.up_transformer_layers)
  out = {
    "_class_name": "UNet2DConditionModel",
    "in_channels": cfg.in_channels,
    "out_channels": cfg.out_channels,
    "block_out_channels": list(cfg.block_out_channels),
    "down_block_types": list(cfg.down_block_types),
    "up_block_types": list(cfg.up_block_types),
    "mid_block_type": cfg.mid_block_type,
    "layers_per_block": list(cfg.layers_per_block),
    "attention_head_dim": list(cfg.num_attention_heads),
    "cross_attention_dim": list(cfg.cross_attention_dim),
    "use_linear_projection": cfg.use_linear_projection,
    "norm_num_groups": cfg.norm_num_groups,
    "norm_eps": cfg.norm_eps,
    "act_fn": cfg.act_fn,
    "flip_sin_to_cos": cfg.flip_sin_to_cos,
    "freq_shift": cfg.freq_shift,
    "downsample_padding": cfg.downsample_padding,
    "mid_block_scale_factor": cfg.mid_block_scale_factor,
    "resnet_out_scale_factor": cfg.resnet_out_scale_factor,
    "center_input_sample": cfg.center_input_sample,
    "conv_in_kernel": cfg.conv_in_kernel,
    "conv_out_kernel": cfg.conv_out_kernel,
    "time_embedding_dim": cfg.time_embedding_dim,
    "time_embedding_act_fn": cfg.time_embedding_act_fn,
    "addition_embed_type": cfg.addition_embed_type,
    "addition_time_embed_dim": cfg.addition_time_embed_dim,
    "projection_class_embeddings_input_dim": cfg.projection_class_embeddings_input_dim,
    "upcast_attention": cfg.upcast_attention,
    "sample_size": cfg.sample_size,
  }
  if cfg.attention_type != "default":
    out["attention_type"] = cfg.attention_type
    if len(set(cfg.cross_attention_dim)) == 1:  # diffusers' GLIGEN position net takes an int (or tuple), not a list
      out["cross_attention_dim"] = cfg.cross_attention_dim[0]
  if uniform:
    out["transformer_layers_per_block"] = [t[0] for t in cfg.down_transformer_layers]
    if any(t[0] != cfg.up_transformer_layers[i][0] for i, t in enumerate(reversed(cfg.down_transformer_layers))):
      out["reverse_transformer_layers_per_block"] = [list(t) for t in cfg.up_transformer_layers]
  else:
    out["transformer_layers_per_block"] = [list(t) for t in cfg.down_transformer_layers]
    out["reverse_transformer_layers_per_block"] = [list(t) for t in cfg.up_transformer_layers]
  if cfg.mid_transformer_layers != _per_layer(out["transformer_layers_per_block"][-1], 1)[0]:
    raise CheckpointError(
      "diffusers takes the mid block's transformer depth from the last down "
      f"block; mid_transformer_layers={cfg.mid_transformer_layers} cannot be exported"
    )
  return out


def _common_rules(prefix: str) -> list[Rule]:
  """Resnet, resample and norm leaves under `prefix` (any block)."""
  p = prefix
  out = []
  for conv in ("conv1", "conv2", "conv_shortcut"):
    out += [
      Rule(p + f"resnets.{{j}}.{conv}.kernel", p + f"resnets.{{j}}.{conv}.weight", CONV),
      Rule(p + f"resnets.{{j}}.{conv}.bias", p + f"resnets.{{j}}.{conv}.bias"),
    ]
  for norm in ("norm1", "norm2"):
    out += [
      Rule(p + f"resnets.{{j}}.{norm}.scale", p + f"resnets.{{j}}.{norm}.weight"),
      Rule(p + f"resnets.{{j}}.{norm}.bias", p + f"resnets.{{j}}.{norm}.bias"),
    ]
  out += [
    Rule(p + "resnets.{j}.time_emb_proj.kernel", p + "resnets.{j}.time_emb_proj.weight", LINEAR),
    Rule(p + "resnets.{j}.time_emb_proj.bias", p + "resnets.{j}.time_emb_proj.bias"),
  ]
  for s in ("downsamplers", "upsamplers"):
    out += [
      Rule(p + f"{s}.0.conv.kernel", p + f"{s}.0.conv.weight", CONV),
      Rule(p + f"{s}.0.conv.bias", p + f"{s}.0.conv.bias"),
    ]
  return out


def _attention_rules(ours: str, theirs: str) -> list[Rule]:
  out = []
  for a, b in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0")):
    out += [Rule(f"{ours}.{a}.kernel", f"{theirs}.{b}.weight", LINEAR), Rule(f"{ours}.{a}.bias", f"{theirs}.{b}.bias")]
  return out


def _top_rules(names: tuple[str, ...]) -> list[Rule]:
  out = []
  for name in names:
    kind = CONV if "conv" in name else LINEAR
    out += [
      Rule(f"{name}.kernel", f"{name}.weight", kind),
      Rule(f"{name}.bias", f"{name}.bias"),
      Rule(f"{name}.scale", f"{name}.weight"),
    ]
  return out


def unet_rules(cfg: UNetConfig) -> list[Rule]:
  proj = LINEAR if cfg.use_linear_projection else CONV
  out = _top_rules(
    (
      "conv_in",
      "conv_out",
      "conv_norm_out",
      "time_embedding.linear_1",
      "time_embedding.linear_2",
      "add_embedding.linear_1",
      "add_embedding.linear_2",
    )
  )
  for blk in ("down_blocks.{i}.", "up_blocks.{i}.", "mid_block."):
    out += _common_rules(blk)
    a = blk + "attentions.{j}."
    t = a + "transformer_blocks.{k}."
    out += [Rule(a + "norm.scale", a + "norm.weight"), Rule(a + "norm.bias", a + "norm.bias")]
    for pr in ("proj_in", "proj_out"):
      out += [Rule(a + f"{pr}.kernel", a + f"{pr}.weight", proj), Rule(a + f"{pr}.bias", a + f"{pr}.bias")]
    for norm in ("norm1", "norm2", "norm3"):
      out += [Rule(t + f"{norm}.scale", t + f"{norm}.weight"), Rule(t + f"{norm}.bias", t + f"{norm}.bias")]
    out += _attention_rules(t + "attn1", t + "attn1") + _attention_rules(t + "attn2", t + "attn2")
    out += [
      Rule(t + "ff.proj.kernel", t + "ff.net.0.proj.weight", LINEAR),
      Rule(t + "ff.proj.bias", t + "ff.net.0.proj.bias"),
      Rule(t + "ff.out.kernel", t + "ff.net.2.weight", LINEAR),
      Rule(t + "ff.out.bias", t + "ff.net.2.bias"),
    ]
    if cfg.attention_type == "gated":  # GLIGEN's fuser in every transformer block
      f = t + "fuser."
      out += _attention_rules(f + "attn", f + "attn") + _top_rules((f + "linear",))
      out += [
        Rule(f + f"{n}.{leaf}", f + f"{n}.{pt}")
        for n in ("norm1", "norm2")
        for leaf, pt in (("scale", "weight"), ("bias", "bias"))
      ]
      out += [
        Rule(f + "ff.proj.kernel", f + "ff.net.0.proj.weight", LINEAR),
        Rule(f + "ff.proj.bias", f + "ff.net.0.proj.bias"),
        Rule(f + "ff.out.kernel", f + "ff.net.2.weight", LINEAR),
        Rule(f + "ff.out.bias", f + "ff.net.2.bias"),
        Rule(f + "alpha_attn", f + "alpha_attn"),
        Rule(f + "alpha_dense", f + "alpha_dense"),
      ]
  if cfg.attention_type == "gated":  # GLIGEN's position net (nn.Sequential indices 0, 2, 4)
    for j, k in ((0, 0), (1, 2), (2, 4)):
      out += [
        Rule(f"position_net.linears.{j}.kernel", f"position_net.linears.{k}.weight", LINEAR),
        Rule(f"position_net.linears.{j}.bias", f"position_net.linears.{k}.bias"),
      ]
    out += [Rule(f"position_net.{n}", f"position_net.{n}") for n in ("null_positive_feature", "null_position_feature")]
  return out


def _conv1x1_as_linear(x):
  return x.reshape(x.shape[0], x.shape[1]) if x.ndim == 4 else x


# The VAE's attention projections were 1x1 convs in old checkpoints ([out, in, 1, 1]); accept both.
_VAE_LINEAR = Transform(
  lambda x: _conv1x1_as_linear(x).T, lambda x: x.T, "transpose [out, in] -> [in, out] (an old 1x1 conv: squeezed)"
)


def vae_rules(cfg: VAEConfig) -> list[Rule]:
  out = _top_rules(("quant_conv", "post_quant_conv"))
  for part in ("encoder", "decoder"):
    out += _top_rules((f"{part}.conv_in", f"{part}.conv_out", f"{part}.conv_norm_out"))
    for blk in (f"{part}.down_blocks.{{i}}.", f"{part}.up_blocks.{{i}}.", f"{part}.mid_block."):
      out += _common_rules(blk)
    a = f"{part}.mid_block.attentions.0."
    out += [Rule(a + "group_norm.scale", a + "group_norm.weight"), Rule(a + "group_norm.bias", a + "group_norm.bias")]
    for x, y in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0")):
      out += [Rule(a + f"attn.{x}.kernel", a + f"{y}.weight", _VAE_LINEAR), Rule(a + f"attn.{x}.bias", a + f"{y}.bias")]
  return out


def vae_config_from_diffusers(d: Mapping[str, Any], **overrides) -> VAEConfig:
  for key, want in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
    bad = [t for t in d.get(key, [want]) if t != want]
    if bad:
      raise CheckpointError(f"VAE config: {key} {bad} not supported (only {want})")
  if d.get("latents_mean") is not None:
    raise CheckpointError("VAE config: latents_mean/latents_std normalisation is not supported")
  boc = tuple(d.get("block_out_channels", (64,)))
  if len(d.get("down_block_types", boc)) != len(boc):
    raise CheckpointError("VAE config: down_block_types and block_out_channels differ in length")
  return VAEConfig(
    in_channels=d.get("in_channels", 3),
    out_channels=d.get("out_channels", 3),
    block_out_channels=boc,
    layers_per_block=d.get("layers_per_block", 1),
    latent_channels=d.get("latent_channels", 4),
    norm_num_groups=d.get("norm_num_groups", 32),
    act_fn=d.get("act_fn", "silu"),
    scaling_factor=d.get("scaling_factor", 0.18215),
    shift_factor=d.get("shift_factor"),
    use_quant_conv=d.get("use_quant_conv", True),
    use_post_quant_conv=d.get("use_post_quant_conv", True),
    mid_block_add_attention=d.get("mid_block_add_attention", True),
    force_upcast=d.get("force_upcast", True),
    sample_size=d.get("sample_size", 32),
  ).replace(**overrides)


def vae_config_to_diffusers(cfg: VAEConfig) -> dict:
  n = len(cfg.block_out_channels)
  return {
    "_class_name": "AutoencoderKL",
    "in_channels": cfg.in_channels,
    "out_channels": cfg.out_channels,
    "down_block_types": ["DownEncoderBlock2D"] * n,
    "up_block_types": ["UpDecoderBlock2D"] * n,
    "block_out_channels": list(cfg.block_out_channels),
    "layers_per_block": cfg.layers_per_block,
    "act_fn": cfg.act_fn,
    "latent_channels": cfg.latent_channels,
    "norm_num_groups": cfg.norm_num_groups,
    "sample_size": cfg.sample_size,
    "scaling_factor": cfg.scaling_factor,
    "shift_factor": cfg.shift_factor,
    "force_upcast": cfg.force_upcast,
    "use_quant_conv": cfg.use_quant_conv,
    "use_post_quant_conv": cfg.use_post_quant_conv,
    "mid_block_add_attention": cfg.mid_block_add_attention,
  }


def read_config(path: str | os.PathLike) -> dict:
  return read_json_config(
    path, f"a diffusers model folder (config.json + {WEIGHTS}), e.g. the unet/ or vae/ subfolder of a pipeline"
  )


def load_diffusers_unet(path: str | os.PathLike, **config_overrides) -> UNet2DConditionModel:
  """NNX UNet from a diffusers UNet2DConditionModel folder; overrides: UNetConfig fields."""
  cfg = unet_config_from_diffusers(read_config(path), **config_overrides)
  model = nnx.eval_shape(lambda: UNet2DConditionModel(cfg, rngs=nnx.Rngs(0)))
  return fill_diffusers_unet(model, path, dtype=np.dtype(cfg.param_dtype))


def fill_diffusers_unet(
  unet: UNet2DConditionModel, path: str | os.PathLike, *, dtype=None, shardings=None, on_mismatch: str = "error"
) -> UNet2DConditionModel:
  """Fills an existing UNet in place from a diffusers folder (or weights file), whatever that
  folder's config says; on_mismatch='keep_init' leaves re-shaped tensors (e.g. cross-attention
  keys for another condition width) at their current values, as ignore_mismatched_sizes=True."""
  return load_state_dict(
    unet,
    read_state_dict(path),
    unet_rules(unet.cfg),
    dtype=dtype,
    shardings=shardings,
    source=str(path),
    on_mismatch=on_mismatch,
  )


_OLD_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _renamed_vae_keys(state_dict):
  """Old diffusers VAE checkpoints name the mid-block attention query/key/value/proj_attn."""
  pattern = re.compile(r"^(.*\.mid_block\.attentions\.0\.)(query|key|value|proj_attn)\.(weight|bias)$")
  if not any(pattern.match(k) for k in state_dict):
    return state_dict
  out = {}
  for k in state_dict:
    m = pattern.match(k)
    out[f"{m[1]}{_OLD_VAE_ATTENTION[m[2]]}.{m[3]}" if m else k] = state_dict[k]
  return out


def load_diffusers_vae(path: str | os.PathLike, **config_overrides) -> AutoencoderKL:
  """NNX AutoencoderKL from a diffusers AutoencoderKL folder; overrides: VAEConfig fields."""
  cfg = vae_config_from_diffusers(read_config(path), **config_overrides)
  model = nnx.eval_shape(lambda: AutoencoderKL(cfg, rngs=nnx.Rngs(0)))
  return fill_diffusers_vae(model, path, dtype=np.dtype(cfg.param_dtype))


def fill_diffusers_vae(vae: AutoencoderKL, path: str | os.PathLike, *, dtype=None, shardings=None) -> AutoencoderKL:
  """Fills an existing AutoencoderKL in place from a diffusers folder (or weights file)."""
  return load_state_dict(
    vae,
    _renamed_vae_keys(read_state_dict(path)),
    vae_rules(vae.cfg),
    dtype=dtype,
    shardings=shardings,
    source=str(path),
  )


def _save(path, state_dict, config):
  path = Path(path)
  save_state_dict(state_dict, path, filename=WEIGHTS)
  write_json_config(path, config)


def save_diffusers_unet(model: UNet2DConditionModel, path: str | os.PathLike, *, dtype=None) -> None:
  """Writes config.json + diffusion_pytorch_model.safetensors for UNet2DConditionModel.from_pretrained."""
  _save(path, export_state_dict(model, unet_rules(model.cfg), dtype=dtype), unet_config_to_diffusers(model.cfg))


def save_diffusers_vae(model: AutoencoderKL, path: str | os.PathLike, *, dtype=None) -> None:
  """Writes config.json + diffusion_pytorch_model.safetensors for AutoencoderKL.from_pretrained."""
  _save(path, export_state_dict(model, vae_rules(model.cfg), dtype=dtype), vae_config_to_diffusers(model.cfg))


def register_native_kinds() -> None:
  """Lets convert.native save/load UNets and VAEs (kinds 'unet', 'vae'); imports Orbax, so lazy."""
  from wegen_jax.convert.native import register_kind

  register_kind("unet", UNetConfig, UNet2DConditionModel)
  register_kind("vae", VAEConfig, AutoencoderKL)


def _cli_to_jax(loader, what):
  def run(args):
    from wegen_jax.convert.native import save_native

    register_native_kinds()
    model = loader(args.src, **({"param_dtype": args.dtype} if args.dtype else {}))
    save_native(model, args.out)
    print(f"wrote {args.out} (wegen_jax {what})")

  return run


def _cli_to_diffusers(saver, what):
  def run(args):
    from wegen_jax.convert.native import load_native

    register_native_kinds()
    saver(load_native(args.src), args.out, dtype=args.dtype and np.dtype(args.dtype))
    print(f"wrote {args.out} (diffusers {what})")

  return run


command(
  "diffusers-unet",
  "diffusers UNet2DConditionModel dir (config.json + diffusion_pytorch_model.safetensors) -> wegen_jax checkpoint",
  src_out_args,
)(_cli_to_jax(load_diffusers_unet, "UNet"))
command(
  "jax-to-diffusers-unet",
  "wegen_jax UNet checkpoint -> dir that UNet2DConditionModel.from_pretrained loads",
  src_out_args,
)(_cli_to_diffusers(save_diffusers_unet, "UNet2DConditionModel"))
command("diffusers-vae", "diffusers AutoencoderKL dir -> wegen_jax checkpoint", src_out_args)(
  _cli_to_jax(load_diffusers_vae, "VAE")
)
command(
  "jax-to-diffusers-vae", "wegen_jax VAE checkpoint -> dir that AutoencoderKL.from_pretrained loads", src_out_args
)(_cli_to_diffusers(save_diffusers_vae, "AutoencoderKL"))
