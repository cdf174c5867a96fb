"""Every config in configs/ builds its model abstractly (nnx.eval_shape: shapes only, no memory), 7B sizes
included, with the parameter counts of the real checkpoints.

Cases: configs/lm_train.py and configs/lm_generate.py for every preset of wegen_jax/models/presets.py, and
configs/wegen.py for size=tiny|small|7b x stage=1|2|3; curate.py and synthetic.py build no model and are only loaded.
Specs that give the same model are built once: the key is the task and `config.model` without the fields that
only the loss and the samplers read (the WeGen stages differ in those alone; test_training_only_fields_... checks
that they leave the parameters unchanged), so the 43 specs make 26 builds.

Speed: builds run under parallel.terse_tracer_errors, as the trainer's create_sharded does (WeGen-7B: ~5 s
instead of 92 s; its docstring says why), and a failed build is rebuilt without it for jax's full error text.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

import jax
import pytest
from flax import nnx

from wegen_jax.config_utils import load_config, packaged_configs, parse_arg
from wegen_jax.models import LLM, LLMConfig
from wegen_jax.models.presets import LLM_PRESETS
from wegen_jax.parallel.sharding import terse_tracer_errors
from wegen_jax.systems.wegen.config import WeGenConfig
from wegen_jax.systems.wegen.model import WeGen
from wegen_jax.training.task import get_task

MODEL_SPECS = (
  [f"configs/lm_train.py:model={m}" for m in LLM_PRESETS]
  + [f"configs/lm_generate.py:model={m}" for m in LLM_PRESETS]
  + [f"configs/wegen.py:size={size},stage={stage}" for size in ("tiny", "small", "7b") for stage in (1, 2, 3)]
  + [f"configs/eval/wegen_dynamics.py:stage={stage}" for stage in (1, 2)]
  + ["configs/eval/wegen_coco.py", "configs/eval/geneval_synthetic.py"]
  + [f"configs/got.py:size={size},stage={stage}" for size in ("tiny", "3b") for stage in (1, 2)]
  + [f"configs/{name}.py:size={size}" for name in ("gill", "mgcc") for size in ("tiny", "6.7b")]
  + [f"configs/eval/{name}.py:system={system}" for name in ("gill_vist", "gill_visdial") for system in ("gill", "mgcc")]
)
# Configs without a model (curation and the synthetic corpus), with their presets: they only have to load.
OTHER_SPECS = [f"configs/curate.py{p}" for p in ("", ":preset=synthetic", ":preset=clip", ":preset=vlm")] + [
  "configs/synthetic.py",
  "configs/synthetic.py:preset=large",
]

# config.model fields that no module constructor reads (loss terms, noise schedules, VAE encoder passes).
TRAINING_ONLY = {
  "wegen": (
    "train_scheduler",
    "sample_scheduler",
    "snr_gamma",
    "loss_weights",
    "diffusion_images_per_example",
    "vae_encode_slices",
  )
}

# Parameter counts of the real checkpoints (HF transformers / diffusers), which the presets reproduce.
KNOWN_LLM_PARAMS = {
  "llama2_7b": 6_738_415_616,  # meta-llama/Llama-2-7b-hf
  "wegen_llama2_7b": 6_738_415_616 + 2 * 330 * 4096,  # 330 more rows in embed_tokens and lm_head
  "llama3_8b": 8_030_261_248,  # meta-llama/Meta-Llama-3-8B
  "qwen2_5_vl_3b": 3_085_938_688,  # Qwen2.5-VL-3B's text model (the Qwen2.5-3B layout, tied embeddings)
  "opt_6_7b": 6_658_473_984,  # facebook/opt-6.7b
}
SDXL_UNET_PARAMS = 2_567_463_684  # stabilityai/stable-diffusion-xl-base-1.0 unet
# WeGen's UNet attends to 1792-wide EVA features instead of SDXL's 2048-wide text: 10 transformer blocks at
# 640 channels and 60 at 1280 each lose 256 input rows in to_k and to_v, and add_embedding.linear_1 takes
# 1792 + 6 * 256 = 3328 inputs instead of 2816 (1280 outputs).
WEGEN_7B_UNET_PARAMS = SDXL_UNET_PARAMS - 2 * 256 * (10 * 640 + 60 * 1280) + (3328 - 2816) * 1280
SDXL_VAE_PARAMS = 83_653_863  # stabilityai/stable-diffusion-xl-base-1.0 vae (AutoencoderKL)
WEGEN_PARTS = ("vision", "input_proj", "llm", "output_proj", "unet", "vae")


def llm_param_count(c: LLMConfig) -> int:
  """Parameters of the HF layout of `c` (Llama / Qwen2 / OPT; no word_embed_proj_dim)."""
  h, d, inter = c.hidden_size, c.dim_per_head, c.intermediate_size
  q, kv = c.num_heads * d, c.kv_heads * d
  norm = h * (2 if c.norm == "layer" and c.norm_bias else 1)
  attn = h * (q + 2 * kv) + q * h + ((q + 2 * kv) if c.qkv_bias else 0) + (h if c.out_bias else 0)
  if c.gated_mlp:
    mlp = 3 * h * inter + ((2 * inter + h) if c.mlp_bias else 0)
  else:
    mlp = 2 * h * inter + ((inter + h) if c.mlp_bias else 0)
  total = c.vocab_size * h * (1 if c.tie_word_embeddings else 2) + c.num_layers * (attn + mlp + 2 * norm)
  if c.final_norm:
    total += norm
  if c.position_embedding == "learned":
    total += (c.max_position_embeddings + c.learned_position_offset) * h
  if c.short_conv:  # ours, not in the HF layout: one depthwise [width, hidden] kernel per layer
    total += c.num_layers * c.short_conv * h
  return total


def _model_key(spec: str):
  """Specs with equal keys build the same model; a spec that does not load is its own case."""
  try:
    config = load_config(spec)
    model = config.model.to_dict()
  except Exception:
    return ("unloadable", spec)
  for name in TRAINING_ONLY.get(config.get("task"), ()):
    model.pop(name, None)
  return (config.get("task"), json.dumps(model, sort_keys=True, default=repr))


def _groups() -> list[tuple[str, ...]]:
  groups: dict = {}
  for spec in MODEL_SPECS:
    groups.setdefault(_model_key(spec), []).append(spec)
  return [tuple(specs) for specs in groups.values()]


def _short(spec: str) -> str:
  path, _, arg = spec.partition(":")
  return path.removeprefix("configs/").removesuffix(".py") + (f":{arg}" if arg else "")


GROUPS = _groups()


def _abstract(build):
  """nnx.eval_shape(build): the module with ShapeDtypeStruct parameters."""
  try:
    with terse_tracer_errors():  # the trainer's create_sharded builds the same way
      return nnx.eval_shape(build)
  except Exception:
    return nnx.eval_shape(build)  # again, for jax's full error message


def _build(config):
  """The model as its entry point builds it: the trainer's task (`config.task`), else generate.py's LLM."""
  if "task" in config:
    task = get_task(config)
    return _abstract(lambda: task.build_model(nnx.Rngs(config.seed)))
  return _abstract(lambda: LLM(LLMConfig(**config.model), rngs=nnx.Rngs(config.seed)))


def _param_count(module) -> int:
  leaves = jax.tree.leaves(nnx.state(module, nnx.Param))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves), "parameters are not abstract"
  return sum(math.prod(x.shape) for x in leaves)


def _shapes(module) -> dict:
  leaves = jax.tree.leaves_with_path(nnx.state(module))
  return {jax.tree_util.keystr(path): (tuple(x.shape), str(x.dtype)) for path, x in leaves}


def test_every_config_is_covered():
  listed = {spec.partition(":")[0] for spec in MODEL_SPECS + OTHER_SPECS}
  assert listed == set(packaged_configs()), "add new configs/ files to MODEL_SPECS or OTHER_SPECS"


@pytest.mark.parametrize("spec", OTHER_SPECS, ids=_short)
def test_config_without_a_model_loads(spec):
  config = load_config(spec)
  assert "model" not in config and "task" not in config


@pytest.mark.parametrize("specs", GROUPS, ids=lambda specs: "+".join(map(_short, specs)))
def test_config_builds_its_model(specs):
  configs = [load_config(spec) for spec in specs]
  for config in configs:  # every spec's task, also those whose model is built once for the group
    if "task" in config:
      get_task(config)
  config, args = configs[0], parse_arg(specs[0].partition(":")[2], model=None, size=None, stage=None)
  start = time.perf_counter()
  model = _build(config)
  seconds = time.perf_counter() - start
  total = _param_count(model)
  assert total > 0

  if config.get("task") == "wegen":
    assert isinstance(model, WeGen)
    parts = {name: _param_count(getattr(model, name)) for name in WEGEN_PARTS}
    assert sum(parts.values()) == total, f"parameters outside {WEGEN_PARTS}"
    assert parts["llm"] == llm_param_count(get_task(config).model_config.llm), parts
    assert all(parts[name] > 0 for name in WEGEN_PARTS if name != "vae"), parts
    if args["size"] == "7b":
      assert parts["llm"] == KNOWN_LLM_PARAMS["wegen_llama2_7b"], parts
      assert abs(parts["llm"] / 6.7e9 - 1) < 0.01, parts
      assert 4.3e9 < parts["vision"] < 4.45e9, parts  # EVA-CLIP-E/14-plus's visual tower: 4.4B
      assert parts["unet"] == WEGEN_7B_UNET_PARAMS, parts
      assert parts["vae"] == SDXL_VAE_PARAMS, parts
    else:
      assert parts["vae"] == 0, parts  # the tiny size folds pixels (PatchAutoencoder): nothing to learn
  elif config.get("task") == "got":
    _check_got(get_task(config).model_config, model, total, args["size"])
  elif config.get("task") == "gill":
    _check_gill(get_task(config).model_config, model, total, args["size"])
  else:
    assert isinstance(model, LLM)
    assert total == llm_param_count(LLMConfig(**config.model))
    if args["model"] in KNOWN_LLM_PARAMS:
      assert total == KNOWN_LLM_PARAMS[args["model"]]
  print(f"{'+'.join(map(_short, specs))}: {total:,} parameters, built in {seconds:.2f} s")


GILL_PARTS = ("llm", "vision", "visual_embeddings", "visual_fc", "ret_text_fc", "gen_text_fc", "logit_scale")
GILL_PARTS += ("decision", "refine", "sd_text", "unet", "vae")


def _check_gill(cfg, model, total, size):
  """GILL / MGCC: OPT with 8 more (tied) rows; the mapper as torch.nn.Transformer counts it; at
  6.7b the public CLIP ViT-L/14 vision tower, SD v1.5's text encoder, UNet and VAE."""
  parts = dict.fromkeys(GILL_PARTS, 0)
  for path, x in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    parts[str(path[0])] += math.prod(x.get_value().shape)
  assert sum(parts.values()) == total, parts
  assert parts["llm"] == llm_param_count(cfg.llm), parts
  m, e = cfg.mapper, cfg.llm.hidden_size
  w, f = m.width, m.mlp_dim
  attn, ff, norm = 4 * (w * w + w), 2 * w * f + f + w, 2 * w
  mapper = (e * w + w) + m.encoder_layers * (attn + ff + 2 * norm) + m.decoder_layers * (2 * attn + ff + 3 * norm)
  mapper += 2 * norm + m.num_queries * w + w * m.out_dim + m.out_dim
  assert parts["gen_text_fc"] == mapper, parts
  assert (parts["refine"] > 0) == cfg.refine and cfg.unet.attention_type == ("gated" if cfg.grounding else "default")
  if size == "6.7b":
    assert parts["llm"] == KNOWN_LLM_PARAMS["opt_6_7b"] + 2 * 4096, parts  # vocabulary 50274 (50266..50273 = [IMG])
    assert parts["gen_text_fc"] == 31_958_784 and parts["visual_embeddings"] == 1024 * 4 * 4096 + 4 * 4096, parts
    assert parts["vision"] == 303_179_776, parts  # openai/clip-vit-large-patch14 vision_model
    assert parts["sd_text"] == 123_060_480, parts  # stable-diffusion-v1-5 text_encoder
    assert parts["vae"] == 83_653_863, parts
    if not cfg.grounding:
      assert parts["unet"] == 859_520_964, parts  # stable-diffusion-v1-5 unet


def _check_got(cfg, model, total, size):
  """GoT: the LLM's HF count plus LoRA A/B on q, k, v, o, gate, up, down; SSGM 2048 -> 2048 and
  2048 -> 1280 with biases; SDXL's UNet with conv_in widened from 4 to 12 input channels."""
  c, r, e = cfg.llm, cfg.lora_rank, cfg.llm.hidden_size
  q, kv, inter = c.num_heads * c.dim_per_head, c.kv_heads * c.dim_per_head, c.intermediate_size
  lora = r * ((e + q) * 2 + (e + kv) * 2 + (e + inter) * 3) * c.num_layers
  parts = {name: _param_count(getattr(model, name)) for name in ("llm", "visual", "semantic", "pooled", "unet", "vae")}
  assert sum(parts.values()) == total, parts
  assert parts["llm"] == llm_param_count(c) + lora, parts
  assert parts["semantic"] == e * e + e and parts["pooled"] == e * cfg.pooled_dim + cfg.pooled_dim, parts
  if size == "3b":
    assert parts["llm"] - lora == KNOWN_LLM_PARAMS["qwen2_5_vl_3b"], parts
    assert lora == 59_867_136, lora  # r 32 over 36 layers
    assert parts["unet"] == SDXL_UNET_PARAMS + 8 * 320 * 3 * 3, parts
    assert parts["vae"] == SDXL_VAE_PARAMS, parts
    assert parts["visual"] == 3_754_622_976 - KNOWN_LLM_PARAMS["qwen2_5_vl_3b"], (
      parts
    )  # Qwen2.5-VL-3B minus its text model


def test_training_only_fields_do_not_change_the_model():
  """The dedup above is sound: changing every TRAINING_ONLY field leaves the parameters as they were."""
  config = load_config("configs/wegen.py:size=tiny,stage=2")
  other = load_config("configs/wegen.py:size=tiny,stage=2")
  other.model.update(
    train_scheduler=dict(other.model.train_scheduler, prediction_type="epsilon", num_train_timesteps=10),
    sample_scheduler=dict(other.model.sample_scheduler, _class_name="EulerDiscreteScheduler"),
    snr_gamma=None,
    loss_weights=dict(ce=0.5, mse=2.0, cos=0.0, diffusion=3.0),
    diffusion_images_per_example=1,
    vae_encode_slices=2,
  )
  assert set(TRAINING_ONLY["wegen"]) <= {f.name for f in dataclasses.fields(WeGenConfig)}
  assert get_task(config).model_config != get_task(other).model_config
  assert _shapes(_build(config)) == _shapes(_build(other))


def test_dedup_merges_only_same_model_configs():
  merged = sorted(tuple(map(_short, g)) for g in GROUPS if len(g) > 1)
  evals = tuple(f"eval/wegen_dynamics:stage={t}" for t in (1, 2))  # configs/eval/ reuse the tiny model
  assert merged == sorted(
    [
      tuple(f"wegen:size=7b,stage={t}" for t in (1, 2, 3)) + ("eval/wegen_coco",),
      tuple(f"wegen:size={size},stage={t}" for size in ("tiny", "small") for t in (1, 2, 3))
      + evals
      + ("eval/geneval_synthetic",),
      ("gill:size=6.7b", "eval/gill_vist:system=gill", "eval/gill_visdial:system=gill"),
      ("mgcc:size=6.7b", "eval/gill_vist:system=mgcc", "eval/gill_visdial:system=mgcc"),
      *(tuple(f"got:size={size},stage={t}" for t in (1, 2)) for size in ("tiny", "3b")),
    ]
  )
  assert not any(key[0] == "unloadable" for key in map(_model_key, MODEL_SPECS))


@pytest.mark.parametrize(
  "field,value,error",
  [("llm.hidden_sise", 64, "hidden_sise"), ("unet.norm_num_groups", 7, "not divisible into 7 groups")],
  ids=["typo", "bad-value"],
)
def test_a_broken_model_config_fails_to_build(field, value, error):
  """A typo'd field fails in the config (LLMConfig), an impossible value inside the traced build (GroupNorm)."""
  config = load_config("configs/wegen.py:size=tiny,stage=1")
  part, name = field.split(".")
  config.model[part][name] = value
  with pytest.raises((TypeError, ValueError), match=error):
    _build(config)


def test_wegen_small_is_the_tiny_model_on_a_longer_edit_recipe():
  """size=small (the longer CPU recipe) shares tiny's model (the dedup test above) and data, and
  trains longer; its stage 2 sees edits only, each instruction in a 32-token slot that max_len holds."""
  for stage in (1, 2, 3):
    tiny, small = (load_config(f"configs/wegen.py:size={s},stage={stage}") for s in ("tiny", "small"))
    assert small.model == tiny.model and small.total_steps > tiny.total_steps
    assert small.total_steps == small.optimizer.total_steps
  assert dict(small.data.first_turn) == dict(tiny.data.first_turn)  # stage 3: the same mixture
  small2 = load_config("configs/wegen.py:size=small,stage=2")
  assert dict(small2.data.first_turn) == {"image": 1.0} and small2.data.instruction_slot == 32
  assert small2.data.max_len == 320 + 2 * 32  # no drawn frame A: no caption to hold
