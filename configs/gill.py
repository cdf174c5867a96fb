"""GILL (github kohjingyu/gill): frozen OPT + CLIP ViT-L/14, trained [IMG] tokens, mapper and retrieval heads.

  python -m wegen_jax.train --config configs/gill.py:size=tiny --workdir /tmp/gill

size=tiny trains on a CPU in minutes on synthetic 3-step stories (the procedural dynamics world:
frames spread over a clip with their captions; the last frame is the target), with a 2-layer OPT,
a 1-layer CLIP tower, a 2+2-layer mapper to a 16 x 32 "SD text" space and a tiny UNet on 32-px
frames folded into 16x16x12 latents; all four losses (loss_cap, loss_ce, loss_ret, loss_gen) fall.
size=6.7b holds the release's dimensions: OPT-6.7B (vocabulary 50274 with [IMG0..7] at
50266..50273), CLIP ViT-L/14 at 224 px, the 4+4-layer d-512 mapper to 77 x 768, SD v1.5, and the
recipe: AdamW lr 1e-3, betas (0.9, 0.95), wd 0.01, batch 200, 20k steps, 2000 warm-up, bf16.
Weights (local folders): --config.pretrained.llm=/w/opt-6.7b --config.pretrained.clip=/w/clip-vit-large-patch14
--config.pretrained.sd=/w/stable-diffusion-v1-5 [--config.pretrained.release=/w/gill/checkpoints/gill_opt],
tokenizers --config.data.tokenizer=/w/gill_tokenizer --config.data.sd_tokenizer=/w/stable-diffusion-v1-5/tokenizer,
data --config.data.source=captions --config.data.captions=/data/cc3m_train.jsonl.
MGCC is this config with two more modules: configs/mgcc.py.
arg: size=tiny|6.7b.
"""

import ml_collections

from wegen_jax.config_utils import parse_arg
from wegen_jax.models.presets import LLM_DEFAULTS, LLM_PRESETS
from wegen_jax.parallel.sharding import DEFAULT_RULES

_SD15_UNET = dict(  # runwayml/stable-diffusion-v1-5 unet/config.json
  block_out_channels=[320, 640, 1280, 1280],
  down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
  up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
  layers_per_block=2,
  attention_head_dim=8,
  cross_attention_dim=768,
  norm_num_groups=32,
  sample_size=64,
)
_SD15_VAE = dict(
  block_out_channels=[128, 256, 512, 512],
  down_block_types=["DownEncoderBlock2D"] * 4,
  up_block_types=["UpDecoderBlock2D"] * 4,
  layers_per_block=2,
  latent_channels=4,
  norm_num_groups=32,
  scaling_factor=0.18215,
  sample_size=512,
)

SIZES = {
  "6.7b": dict(
    model=dict(
      llm=dict(LLM_DEFAULTS, **dict(LLM_PRESETS["opt_6_7b"], vocab_size=50274), remat="full"),
      vision=dict(),  # CLIPVisionConfig defaults = ViT-L/14 at 224 px
      sd_text=dict(eos_token_id=2),  # SD v1.5's text encoder (CLIPTextConfig defaults; pre-2023 pooling rule)
      mapper=dict(),  # MapperConfig defaults = the release's
      unet=_SD15_UNET,
      vae=_SD15_VAE,
      ret_dim=256,
      dtype="bfloat16",
    ),
    data=dict(max_len=160, max_images=4, image_size=512, caption_len=36),
    batch_size=200,
    optimizer=dict(lr=1e-3, total_steps=20_000, warmup_steps=2_000),
    sampling=dict(num_steps=50, guidance_scale=7.5, batch_size=8),
  ),
  "tiny": dict(
    model=dict(
      llm=dict(LLM_DEFAULTS, **dict(LLM_PRESETS["tiny_opt"], vocab_size=268)),  # 260 byte-level + 8 [IMG]
      vision=dict(image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
      # the random frozen tower's kernels N(0, 1/fan_in) instead of its N(0, 0.02^2) init, under which
      # each block adds ~1% to the LayerNorm-ed CLS and the pooled output is the same for every image
      # (across-image share of the pooled features' second moment on 48 synthetic targets: 1e-5 -> 0.11,
      # pairwise cosine 0.99998 -> 0.88; model.redraw_kernels_fan_in). Retrieval stays at chance even so
      # (docs/GILL.md): the random features do not carry the captions' content linearly
      vision_init="fan_in",
      sd_text=dict(
        vocab_size=262,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        eos_token_id=260,
      ),
      mapper=dict(width=32, num_heads=4, encoder_layers=2, decoder_layers=2, mlp_dim=64, num_queries=16, out_dim=32),
      unet=dict(
        block_out_channels=[32, 64],
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        layers_per_block=1,
        attention_head_dim=2,
        cross_attention_dim=32,
        norm_num_groups=8,
        in_channels=12,
        out_channels=12,
        sample_size=16,
      ),
      vae=dict(_class_name="PatchAutoencoder", patch_size=2, shift_factor=-0.49, scaling_factor=3.15, sample_size=32),
      ret_dim=16,
      dtype="float32",
    ),
    data=dict(max_len=512, max_images=2, image_size=32, caption_len=160),
    batch_size=4,
    optimizer=dict(lr=1e-3, total_steps=200, warmup_steps=5),
    sampling=dict(num_steps=4, guidance_scale=7.5, batch_size=4),
  ),
}


def get_config(arg=None):
  args = parse_arg(arg, size="tiny")
  size = args["size"]
  if size not in SIZES:
    raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
  preset = SIZES[size]
  tiny = size == "tiny"
  c = ml_collections.ConfigDict()
  c.task = "gill"
  c.seed = 0
  c.model = dict(preset["model"], num_img_tokens=8, num_visual_tokens=4, refine=False, grounding=False)
  c.model["loss_weights"] = dict(cap=1.0, ce=1.0, ret=1.0, gen=1.0)
  c.total_steps = preset["optimizer"]["total_steps"]
  c.optimizer = dict(
    preset["optimizer"],
    b1=0.9,
    b2=0.95,
    eps=1e-8,
    weight_decay=0.01,
    min_lr_ratio=0.0,
    grad_clip=1.0,
    freeze_until={},
    stack_leaves=False,  # AdamW over stacks of equal-shape leaves (training/stacked_updates.py)
  )
  c.batch_size = preset["batch_size"]
  c.grad_accum = 1
  c.log_every = 10 if tiny else 50
  c.ckpt_every = 100 if tiny else 1000
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  c.compilation_cache_dir = ""
  # source: 'synthetic' (stories, steps frames each), 'captions' (JSONL of {"image", "caption"}) or
  # 'tfds' (those built by `python -m wegen_jax.systems.gill.tfds_captions` into dir: split, validation_split)
  c.data = dict(
    preset["data"],
    source="synthetic",
    steps=3,
    num_records=256,
    num_validation=16,
    seed=0,
    frame_size=64,
    # synthetic stories' texts: 'captions' of each frame, or 'dynamics' (the first frame's caption,
    # then what changed: "nothing changes." where the image repeats; decision training reads these)
    story_text="captions",
    static_fraction=0.0,  # share of synthetic clips with no events (decision training's retrieval examples)
    captions="",
    validation_captions="",
    dir="",
    split="train",
    validation_split="validation",
    tokenizer="",
    sd_tokenizer="",
  )
  c.pretrained = dict(llm="", clip="", sd="", gligen="", release="")
  # True: only the decision head (retrieve vs generate) trains, on synthetic stories with
  # data.story_text='dynamics' and data.static_fraction > 0 (labels: systems/gill/data.py
  # decision_label), the rest frozen as init_from gives it
  c.train_decision = False
  c.init_from = ""
  c.init_components = ()
  # GILL's sampling: SD v1.5, guidance 7.5, 50 steps; text decoding up to max_new_tokens; predict
  # functions run prompts in batches of batch_size (the last padded: one compiled program)
  c.sampling = dict(preset["sampling"], max_new_tokens=32, temperature=0.0, grounded=True, gligen_beta=0.3)
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  c.sharding_rules = [list(r) for r in DEFAULT_RULES]
  return c
