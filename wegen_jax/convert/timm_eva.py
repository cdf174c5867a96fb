"""EVA-CLIP visual tower <-> wegen_jax: timm `Eva` names and the EVA-CLIP `visual.pt` names.

Layouts read (detected per tensor, any prefix such as `visual.` or `visual_encoder.`):
  timm / EVA-CLIP:  blocks.i.attn.qkv.weight (fused) + attn.q_bias + attn.v_bias
  WeGen eva_vision: blocks.i.attn.qkv.weight + attn.qkv.bias (its k third is dropped: a k
                    bias adds the same logit to every key of a query row, softmax ignores it)
  timm unfused:     blocks.i.attn.{q,k,v}_proj.{weight,bias}
A `pos_embed` for another grid (EVA-CLIP-E was trained at 224 px, WeGen runs 448 px) is
resampled bicubically on load (models.vit.resample_pos_embed). EVA-CLIP's final norm/head
(`norm.*`, `fc_norm.*`, `head.*`) are not part of WeGen's tower and are skipped.

Caveat found reading WeGen's code: its eva_vision.py builds `qkv = nn.Linear(..., bias=True)`
and loads visual.pt with strict=False. A visual.pt in the EVA-CLIP layout (q_bias/v_bias)
would leave that qkv.bias at PyTorch's random init there; we load the EVA-CLIP biases, which
is what the weights mean. A visual.pt already in WeGen's layout (qkv.bias) loads exactly.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterator, Mapping

import ml_dtypes
import numpy as np
from flax import nnx

from wegen_jax.convert.checkpoint_io import CheckpointError, state_dict_and_source
from wegen_jax.convert.mapping import CONV, LINEAR, Rule, Transform, export_state_dict, load_state_dict
from wegen_jax.models.eva import EVA_CLIP_E_14_PLUS_448, EVAConfig, EVAVisionTower
from wegen_jax.models.vit import resample_pos_embed

_POS = Transform(lambda x: x.reshape(x.shape[-2:]), lambda x: x[None], "[1, N, D] -> [N, D]")
_CLS = Transform(lambda x: x.reshape(x.shape[-1]), lambda x: x[None, None], "[1, 1, D] -> [D]")
_IGNORE = (
  r"(^|\.)(norm|fc_norm|head)\.",
  r"(^|\.)rope\.",
  r"attn\.k_bias$",
  r"relative_position_index$",
  r"(^|\.)logit_scale$",
  r"(^|\.)avgpoolquery\.",
)

# timm Eva kwargs that change the computation and that this tower does not implement.
_UNSUPPORTED = {
  "use_rot_pos_emb": False,
  "swiglu_mlp": False,
  "scale_mlp": False,
  "scale_attn_inner": False,
  "qk_norm": False,
  "num_reg_tokens": 0,
  "use_pre_transformer_norm": False,
  "attn_type": "eva",
  "attn_only_layer_scale": False,
  "num_kv_heads": None,
  "use_abs_pos_emb": True,
}


def config_from_timm(kwargs: Mapping[str, Any], **overrides) -> EVAConfig:
  """EVAConfig from timm `Eva(**kwargs)` arguments, or from an EVA-CLIP / WeGen `vision_cfg`
  (keys width, layers, head_width, mlp_ratio, postnorm, ...). From timm kwargs the final
  norm follows timm's own rule (so forward_features equals timm's); pooling and the head
  are not part of the tower. EVA-CLIP/WeGen configs give WeGen's tower: no final norm."""
  d = dict(kwargs)
  if "width" in d or "layers" in d:  # EVA-CLIP / WeGen eva_vision.yaml vision_cfg
    width = int(d["width"])
    mlp = d.get("intermediate_size") or int(width * float(d.get("mlp_ratio", 4.0)))
    for key in ("rope", "subln", "naiveswiglu"):
      if d.get(key):
        raise CheckpointError(f"EVA vision_cfg {key}={d[key]!r} is not supported (WeGen's tower has none)")
    cfg = EVAConfig(
      image_size=int(d.get("image_size", 224)),
      patch_size=int(d.get("patch_size", 14)),
      width=width,
      depth=int(d["layers"]),
      num_heads=width // int(d.get("head_width", 64)),
      mlp_dim=int(mlp),
      post_norm=bool(d.get("postnorm", False)),
      qkv_bias=bool(d.get("qkv_bias", True)),
      norm_eps=float(d.get("layer_norm_eps", 1e-6)),
      layer_scale=d.get("ls_init_value", d.get("init_values")) is not None,
    )
    return cfg.replace(**overrides)
  for key, default in _UNSUPPORTED.items():
    if key in d and d[key] != default:
      raise CheckpointError(
        f"timm Eva option {key}={d[key]!r} is not supported by the EVA tower (WeGen's EVA-CLIP-E has {key}={default!r})"
      )
  img, patch = d.get("img_size", 224), d.get("patch_size", 16)
  if not isinstance(img, int) or not isinstance(patch, int):
    if len(set(np.atleast_1d(img))) != 1 or len(set(np.atleast_1d(patch))) != 1:
      raise CheckpointError(f"non-square img_size={img} / patch_size={patch} are not supported")
    img, patch = int(np.atleast_1d(img)[0]), int(np.atleast_1d(patch)[0])
  width = int(d.get("embed_dim", 768))
  post_norm = bool(d.get("use_post_norm", False))
  # timm's resolution of its final norm: on unless fc_norm is (explicitly or by avg pooling).
  fc_norm = d.get("use_fc_norm")
  fc_norm = d.get("global_pool", "avg") == "avg" if fc_norm is None else fc_norm
  final_norm = d.get("use_post_transformer_norm")
  final_norm = not fc_norm if final_norm is None else final_norm
  eps = 1e-6  # timm.layers.LayerNorm's default; a given norm_layer (class or partial) says its own
  if d.get("norm_layer") is not None:
    params = inspect.signature(d["norm_layer"]).parameters
    eps = params["eps"].default if "eps" in params else eps
  cfg = EVAConfig(
    image_size=img,
    patch_size=patch,
    in_channels=int(d.get("in_chans", 3)),
    width=width,
    depth=int(d.get("depth", 12)),
    num_heads=int(d.get("num_heads", 12)),
    mlp_dim=int(width * float(d.get("mlp_ratio", 4.0))),
    post_norm=post_norm,
    qkv_bias=bool(d.get("qkv_bias", True)),
    norm_eps=float(eps),
    # timm ignores init_values for post-norm blocks
    layer_scale=d.get("init_values") is not None and not post_norm,
    class_token=bool(d.get("class_token", True)),
    final_norm=bool(final_norm),
    embed_class=not d.get("no_embed_class", False),
  )
  return cfg.replace(**overrides)


def rules() -> list[Rule]:
  """Our paths <-> canonical timm-style names (fused qkv already split, see `_CanonicalView`)."""
  b, t = "blocks.{i}.", "blocks.{i}."
  out = [
    Rule("patch_embed.kernel", "patch_embed.proj.weight", CONV),
    Rule("patch_embed.bias", "patch_embed.proj.bias"),
    Rule("cls_token", "cls_token", _CLS),
    Rule("pos_embed", "pos_embed", _POS),
    Rule(b + "attn.o.kernel", t + "attn.proj.weight", LINEAR),
    Rule(b + "attn.o.bias", t + "attn.proj.bias"),
    Rule(b + "gamma1", t + "gamma_1"),
    Rule(b + "gamma2", t + "gamma_2"),
    Rule("norm.scale", "norm.weight"),
    Rule("norm.bias", "norm.bias"),
  ]
  out += [Rule(b + f"attn.{n}.kernel", t + f"attn.{n}.weight", LINEAR) for n in "qkv"]
  out += [Rule(b + f"attn.{n}.bias", t + f"attn.{n}.bias") for n in "qv"]
  out += [Rule(b + f"{n}.scale", t + f"{n}.weight") for n in ("norm1", "norm2")]
  out += [Rule(b + f"{n}.bias", t + f"{n}.bias") for n in ("norm1", "norm2")]
  out += [Rule(b + f"mlp.{n}.kernel", t + f"mlp.{n}.weight", LINEAR) for n in ("fc1", "fc2")]
  out += [Rule(b + f"mlp.{n}.bias", t + f"mlp.{n}.bias") for n in ("fc1", "fc2")]
  return out


def _to_numpy(value) -> np.ndarray:
  """numpy from numpy or a torch tensor (bfloat16 kept as ml_dtypes.bfloat16); no torch import."""
  if not hasattr(value, "detach"):
    return np.asarray(value)
  value = value.detach().cpu()
  if str(value.dtype) == "torch.bfloat16":
    return value.float().numpy().astype(ml_dtypes.bfloat16)
  return value.numpy()


def _find_prefix(state_dict: Mapping[str, Any]) -> str:
  for key in state_dict:
    if key.endswith("patch_embed.proj.weight"):
      return key[: -len("patch_embed.proj.weight")]
  raise CheckpointError(
    "no 'patch_embed.proj.weight' in the checkpoint: not an EVA/timm Eva "
    f"visual tower (first keys: {list(state_dict)[:5]})"
  )


class _CanonicalView(Mapping[str, np.ndarray]):
  """Lazy view of a checkpoint under canonical names: prefix stripped, qkv split, pos_embed
  resampled to the config's grid. Tensors are read only when the loader asks for them."""

  def __init__(self, state_dict: Mapping[str, np.ndarray], cfg: EVAConfig, source: str):
    self.cfg, self.source = cfg, source
    prefix = _find_prefix(state_dict)
    self._get: dict[str, Callable[[], np.ndarray]] = {}
    for key in state_dict:
      if not key.startswith(prefix):
        continue
      name, get = key[len(prefix) :], (lambda k=key: _to_numpy(state_dict[k]))
      head, _, leaf = name.rpartition(".")
      if head.endswith("attn.qkv") and leaf in ("weight", "bias"):
        for i, n in enumerate("qkv"):
          if leaf == "weight" or n != "k":
            self._get[f"{head[:-3]}{n}.{leaf}"] = lambda g=get, i=i: np.split(g(), 3, axis=0)[i]
      elif leaf in ("q_bias", "v_bias") and head.endswith("attn"):
        self._get[f"{head}.{leaf[0]}.bias"] = get
      elif head.endswith(("attn.q_proj", "attn.k_proj", "attn.v_proj")):
        if not (head.endswith("k_proj") and leaf == "bias"):
          self._get[f"{head[:-6]}{head[-6]}.{leaf}"] = get
      elif name == "pos_embed":
        self._get[name] = lambda g=get: self._pos_embed(g())
      else:
        self._get[name] = get

  def _pos_embed(self, value: np.ndarray) -> np.ndarray:
    table = value.reshape(value.shape[-2:])
    if table.shape[0] == self.cfg.num_positions:
      return value
    prefix = self.cfg.num_prefix_tokens if self.cfg.embed_class else 0
    try:
      return resample_pos_embed(table, self.cfg.grid, num_prefix_tokens=prefix)[None]
    except ValueError as e:
      raise CheckpointError(
        f"{self.source}: pos_embed {value.shape} cannot be resampled to the "
        f"{self.cfg.grid} grid of image_size={self.cfg.image_size}: {e}"
      ) from None

  def __getitem__(self, name):
    return self._get[name]()

  def __iter__(self) -> Iterator[str]:
    return iter(self._get)

  def __len__(self) -> int:
    return len(self._get)


def load_timm_eva(
  state_dict_or_path, config: EVAConfig | Mapping[str, Any] = EVA_CLIP_E_14_PLUS_448, *, strict: bool = True
) -> EVAVisionTower:
  """EVA tower with the weights of a timm `Eva` state dict or an EVA-CLIP `visual.pt`.

  state_dict_or_path: a mapping name -> array (numpy or torch tensors), or a path read by
    checkpoint_io.read_state_dict (.pt/.bin via torch.load(weights_only=True), .safetensors).
  config: an EVAConfig, timm `Eva` kwargs, or an EVA-CLIP `vision_cfg` dict (config_from_timm);
    default: WeGen's EVA-CLIP-E-14-plus at 448 px (a 224-px pos_embed is resampled).
  Returns an EVAVisionTower; `tower(pixels)` with NCHW pixels [B, 3, H, W] gives the patch
  tokens of the last block [B, (H/p)*(W/p), width] (CLS dropped, no final norm), and
  `tower.forward_features(pixels)` all tokens with CLS first (timm's `forward_features`
  when timm has no final norm).
  """
  cfg = config if isinstance(config, EVAConfig) else config_from_timm(config)
  model = nnx.eval_shape(lambda: EVAVisionTower(cfg, rngs=nnx.Rngs(0)))
  return fill_timm_eva(model, state_dict_or_path, strict=strict, dtype=np.dtype(cfg.param_dtype))


def fill_timm_eva(
  tower: EVAVisionTower, state_dict_or_path, *, strict: bool = True, dtype=None, shardings=None
) -> EVAVisionTower:
  """Fills an existing EVAVisionTower in place (any layout load_timm_eva reads)."""
  sd, source = state_dict_and_source(state_dict_or_path)
  return load_state_dict(
    tower,
    _CanonicalView(sd, tower.cfg, source),
    rules(),
    ignore=_IGNORE,
    strict=strict,
    dtype=dtype,
    shardings=shardings,
    source=source,
  )


def timm_kwargs(cfg: EVAConfig) -> dict[str, Any]:
  """timm `Eva(**kwargs)` arguments that build this tower (config_from_timm's inverse): with
  num_classes=0 and global_pool='' its forward_features is the tower's all-token output."""
  if cfg.activation != "gelu":
    raise CheckpointError(f"EVA activation {cfg.activation!r} has no timm Eva equivalent")
  if cfg.norm_eps != 1e-6:  # another eps needs a norm_layer object, which config.json cannot hold
    raise CheckpointError(f"EVA norm_eps={cfg.norm_eps} differs from timm's LayerNorm default 1e-6")
  return dict(
    img_size=cfg.image_size,
    patch_size=cfg.patch_size,
    in_chans=cfg.in_channels,
    embed_dim=cfg.width,
    depth=cfg.depth,
    num_heads=cfg.num_heads,
    mlp_ratio=cfg.mlp_dim / cfg.width,
    qkv_bias=cfg.qkv_bias,
    use_post_norm=cfg.post_norm,
    init_values=1.0 if cfg.layer_scale else None,  # the value is the init only; the weights overwrite it
    class_token=cfg.class_token,
    no_embed_class=not cfg.embed_class,
    num_classes=0,
    global_pool="",
    use_fc_norm=False,
    use_post_transformer_norm=cfg.final_norm,
  )


def export_timm_eva(model: EVAVisionTower, *, layout: str = "timm", dtype=None) -> dict[str, np.ndarray]:
  """State dict in timm `Eva` names (layout='timm', also EVA-CLIP's visual.pt layout) or in
  WeGen's eva_vision layout (layout='wegen': one qkv.bias with a zero k third)."""
  if layout not in ("timm", "wegen"):
    raise ValueError(f"layout={layout!r}; choose 'timm' or 'wegen'")
  flat = export_state_dict(model, rules(), dtype=dtype)
  out = {}
  for i in range(model.cfg.depth):
    a = f"blocks.{i}.attn."
    out[a + "qkv.weight"] = np.concatenate([flat.pop(a + f"{n}.weight") for n in "qkv"], axis=0)
    if model.cfg.qkv_bias:
      q, v = flat.pop(a + "q.bias"), flat.pop(a + "v.bias")
      if layout == "timm":
        out[a + "q_bias"], out[a + "v_bias"] = q, v
      else:
        out[a + "qkv.bias"] = np.concatenate([q, np.zeros_like(q), v])
  out.update(flat)
  return out


# WeGen's projectors: `input_resampler.proj.weight` (AvgPoolProjector; its `avgpoolquery.scale`
# is an unused parameter) and `output_resampler.proj.weight` (LinearProjector).
PROJECTOR_RULES = [Rule("proj.kernel", "proj.weight", LINEAR)]


def _sub_dict(state_dict: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
  return {k[len(prefix) :]: _to_numpy(state_dict[k]) for k in state_dict if k.startswith(prefix)}


def load_wegen_projectors(
  state_dict_or_path,
  *,
  num_queries: int = 64,
  input_prefix: str = "input_resampler.",
  output_prefix: str = "output_resampler.",
):
  """(InputProjector, OutputProjector) from a WeGen MLLM checkpoint (or its state dict);
  sizes come from the tensors. The other modules' tensors in the file are not read."""
  from wegen_jax.models.projectors import InputProjector, OutputProjector

  sd, source = state_dict_and_source(state_dict_or_path)
  out = []
  for prefix, build in (
    (input_prefix, lambda o, i: InputProjector(i, o, num_queries, rngs=nnx.Rngs(0))),
    (output_prefix, lambda o, i: OutputProjector(i, o, rngs=nnx.Rngs(0))),
  ):
    sub = _sub_dict(sd, prefix)
    if "proj.weight" not in sub:
      raise CheckpointError(f"{source} has no {prefix + 'proj.weight'!r}: not a WeGen MLLM checkpoint?")
    model = nnx.eval_shape(lambda: build(*np.shape(sub["proj.weight"])))
    out.append(
      load_state_dict(model, sub, PROJECTOR_RULES, ignore=[r"^avgpoolquery\."], source=f"{source} ({prefix}*)")
    )
  return tuple(out)


def export_wegen_projectors(input_projector, output_projector, dtype=None) -> dict[str, np.ndarray]:
  """The two projectors under WeGen's names (with AvgPoolQuery's unused `scale` = 1)."""
  out = {f"input_resampler.{k}": v for k, v in export_state_dict(input_projector, PROJECTOR_RULES, dtype).items()}
  out.update(
    {f"output_resampler.{k}": v for k, v in export_state_dict(output_projector, PROJECTOR_RULES, dtype).items()}
  )
  out["input_resampler.avgpoolquery.scale"] = np.asarray(1.0, dtype or np.float32)
  return out
