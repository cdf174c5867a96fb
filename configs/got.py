"""GoT: reasoning-chain MLLM + SSGM + 12-channel SDXL UNet (SYSTEMS.md §2), stages 1 and 2.

  python -m wegen_jax.train --config configs/got.py:size=tiny,stage=1 --workdir /tmp/got1

size=tiny trains in minutes on a CPU on the embedded synthetic scenes (generated in memory:
captions -> chains with ground-truth boxes -> 32-px frames; edit instructions on a clip's first
frame -> its last frame, the MLLM seeing the first); loss_ce and loss_diffusion fall. size=3b holds
the real dimensions: Qwen2.5-VL-3B-Instruct (frozen vision tower; text model hidden 2048, LoRA r 32 / alpha 32 / dropout 0.05 on
q, k, v, o, gate, up, down), SSGM 2048 -> 2048 tokens and 2048 -> 1280 pooled, the SDXL-base UNet
with 12 input channels at 1024 px, the SDXL VAE; fresh runs read local weights, e.g.
  --config.pretrained.llm=/w/Qwen2.5-VL-3B-Instruct --config.pretrained.unet=/w/sdxl/unet
  --config.pretrained.vae=/w/sdxl/vae --config.data.tokenizer=/w/Qwen2.5-VL-3B-Instruct
(the 3B data, LAHR-/JourneyDB-/OmniEdit-GoT, has no loader here yet: only the synthetic default).
Generate, or edit the chain and regenerate: python -m wegen_jax.systems.got --help.
arg: size=tiny|3b, stage=1|2.
"""

import ml_collections

from wegen_jax.config_utils import parse_arg
from wegen_jax.models.presets import LLM_DEFAULTS, LLM_PRESETS, QWEN_VISION_PRESETS, SDXL_UNET, SDXL_VAE, TINY_UNET
from wegen_jax.parallel.sharding import DEFAULT_RULES
from wegen_jax.systems.got.config import GOT_SCHEDULER

# SDXL-base's UNet with GoT's conv_in widened to 12 inputs [noisy | reference | spatial]
_SDXL_UNET = dict(SDXL_UNET, in_channels=12, out_channels=4)


SIZES = {
  "3b": dict(
    model=dict(
      # Qwen's 151936 embedding rows already hold GoT's 66 added tokens (ids 151665..151730)
      llm=dict(LLM_DEFAULTS, **LLM_PRESETS["qwen2_5_vl_3b"], remat="full"),
      # the frozen vision tower sees the source image of an edit at 448 px: 256 <|image_pad|> tokens
      # XLA attention in the tower: it runs vmapped over the batch's images (one per row), and the
      # Pallas TPU kernel's batching rule reads the default device (compile-only AOT has none)
      vision=dict(QWEN_VISION_PRESETS["qwen2_5_vl_3b"], attention_impl="xla"),
      vision_image_size=448,
      image_token_id=151655,
      unet=_SDXL_UNET,
      vae=SDXL_VAE,
      pooled_dim=1280,
      unet_remat=True,
      dtype="bfloat16",
      scan_layers=True,
      attention_impl="auto",
      vae_encode_slices=4,
      lora_rank=32,
      lora_alpha=32.0,
    ),
    data=dict(max_len=1024, image_size=1024, max_boxes=8),
    batch_size=128,
    sampling=dict(num_steps=50, max_new_tokens=1024),
  ),
  "tiny": dict(
    model=dict(
      # the built-in tokenizer (systems/got/tokenizer.py): Qwen's chat/grounding tokens and GoT's 66
      # (ids 0..75), then a byte-level BPE of the synthetic texts: 768 ids
      # short_conv=4: a causal width-4 convolution on each attention input (layers/short_conv.py;
      # not in Qwen, so this LLM does not export to transformers). The chains repeat the caption's
      # words (data.frame_chain), and the conv makes that copy an induction match the tiny LLM
      # learns: colours written right 100% on held-out captions after the default run, where
      # without it (or with chains that reworded the objects) they stayed at chance (docs/GOT.md).
      llm=dict(
        LLM_DEFAULTS,
        **dict(LLM_PRESETS["tiny_qwen_vl"], vocab_size=768, max_position_embeddings=1024, short_conv=4),
      ),
      # a 4-block vision tower on 16-px sources: 8x8 patches merged to 16 <|image_pad|> tokens
      vision=dict(QWEN_VISION_PRESETS["tiny_qwen_vl"]),
      vision_image_size=16,
      image_token_id=9,  # <|image_pad|> of the built-in tokenizer
      unet=dict(
        TINY_UNET,
        cross_attention_dim=64,
        in_channels=3 * 12,  # [noisy | reference | spatial] folded-pixel latents
      ),
      # 32-px frames folded 2x2 into 16x16x12 latents (models/patch_autoencoder.py: exact, no training)
      vae=dict(_class_name="PatchAutoencoder", patch_size=2, shift_factor=-0.49, scaling_factor=3.15, sample_size=32),
      pooled_dim=32,
      dtype="float32",
      attention_impl="xla",
      # no LoRA: the whole LLM trains. There is no pretrained base to adapt, and LoRA on a random
      # frozen one (or the whole LLM on raw bytes) wrote chains with no parsable box after 300 steps
      lora_rank=0,
      lora_alpha=8.0,
    ),
    # synthetic examples: median ~220 tokens, the longest of 200 300
    data=dict(max_len=320, image_size=32, max_boxes=4),
    # 1500 steps at batch 16, lr 3e-3 (~8 min on 2 cores): the caption copy forms after ~1000
    # steps at this batch (a CE-only probe, half the examples edits: colours 27% right after 1125
    # steps, 78% after 1500; captions only: 27% at 750, 94% at 1000); 600 steps at batch 8 did not
    batch_size=16,
    # 4 DDPM steps: on 16 held-out scenes drawn from their true chains, 69/62/53% of the objects
    # are found in their box at 1/4/20 steps (1000-step run) but 1 step blurs the rest (MAE 48 vs 37)
    sampling=dict(num_steps=4, max_new_tokens=256),
  ),
}

# SYSTEMS.md §2: Adam betas (0.9, 0.98), eps 1e-6, wd 0.05, cosine; stage 1 60k steps / 500 warm-up
# at 1e-4, stage 2 10k / 200 at 5e-5.
_STAGE_OPT = {
  1: dict(lr=1e-4, total_steps=60_000, warmup_steps=500),
  2: dict(lr=5e-5, total_steps=10_000, warmup_steps=200),
}


def get_config(arg=None):
  args = parse_arg(arg, size="tiny", stage=1)
  size, stage = args["size"], int(args["stage"])
  if size not in SIZES:
    raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
  if stage not in _STAGE_OPT:
    raise ValueError(f"stage={stage}; choose 1 or 2")
  preset = SIZES[size]
  tiny = size == "tiny"
  c = ml_collections.ConfigDict()
  c.task = "got"
  c.stage = stage
  c.seed = 0
  opt = dict(_STAGE_OPT[stage], weight_decay=0.05, b1=0.9, b2=0.98, eps=1e-6, min_lr_ratio=0.0, grad_clip=1.0)
  # Real sizes update equal-shape leaves stacked (training/stacked_updates.py): 2,262 trainable
  # leaves become 63 stacks, the lowered 3B step 156k -> 67k StableHLO ops (docs/SCALING.md).
  opt["stack_leaves"] = not tiny
  if tiny:  # minutes on a CPU
    opt.update(total_steps=1500 if stage == 1 else 100, warmup_steps=10, lr=3e-3 if stage == 1 else 5e-4)
  c.optimizer = opt
  c.total_steps = opt["total_steps"]
  c.log_every = 10 if tiny else 50
  c.ckpt_every = 100 if tiny else 1000
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  c.compilation_cache_dir = ""
  c.batch_size = preset["batch_size"]
  c.grad_accum = 1
  c.model = dict(preset["model"], num_gen_tokens=64, noise_offset=0.1, cond_drop=0.05, lora_dropout=0.05)
  if tiny:
    # The tiny UNet predicts v (as WeGen's tiny detokenizer, configs/wegen.py) and samples from
    # t=999 (trailing spacing). An epsilon UNet turns its errors at the noisiest steps into
    # noise (x0 = (x - sqrt(1-a) eps) / sqrt(a), 1/sqrt(a) ~ 15): drawn from the true chains,
    # 3-6% of held-out objects were found where their box is (noise images); v finds 19-25%
    # after the same 300 steps at batch 4, 44-59% after 600 at batch 8, 84% after the default 1500
    # at batch 16. GoT-3B keeps SDXL's epsilon and the authors' 50 DDPM steps.
    v_pred = dict(GOT_SCHEDULER, prediction_type="v_prediction")
    c.model.update(train_scheduler=v_pred, sample_scheduler=dict(v_pred, timestep_spacing="trailing"))
  c.data = dict(
    preset["data"],
    tokenizer="",
    seed=0,
    num_records=100_000,  # synthetic: generated from the index, never repeated in a tiny run
    num_validation=32,
    render_size=64,  # frames are drawn at 64 px and resized to image_size
    edit_fraction=0.5,
  )
  c.sampling = dict(preset["sampling"], temperature=0.0)
  # Stage 2 continues stage 1 (a run directory): --config.init_from=/tmp/got1
  c.pretrained = dict(llm="", unet="", vae="")
  c.init_from = ""
  c.init_components = () if stage == 1 else ("llm", "visual", "semantic", "pooled", "unet", "vae")
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  c.sharding_rules = [list(r) for r in DEFAULT_RULES]
  return c
