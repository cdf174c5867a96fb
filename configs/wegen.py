"""WeGen: detokenizer (stage 1) and MLLM (stages 2, 3) training, SYSTEMS.md §1 recipe.

  python -m wegen_jax.train --config configs/wegen.py:size=tiny,stage=2 --workdir /tmp/wegen2 \
      --config.data.dir=DATA_DIR [--config.init_from=/tmp/wegen1]

size=tiny trains on a laptop CPU in minutes (64-px frames, 8x8 EVA grid pooled 1:1 to 64
tokens, 2-layer LLM, 32-px target frames folded into 16x16x12 latents); stage 1 shows loss_diffusion falling, stage 2
loss_ce, loss_mse and loss_cos (size=7b also the authors' loss_diffusion through the frozen UNet: the tiny
default leaves it out, see loss_weights). size=7b holds the real dimensions:
Llama-2-7B-chat (vocab 32330), EVA-CLIP-E-14-plus at 448 px, the SDXL-base UNet with
cross_attention_dim 1792 and a 1792 + 6*256 = 3328 add-embedding input, the SDXL VAE.
Data: wegen_jax.systems.wegen.pipeline over the TFDS dir `data.dir` (dataset wegen_dynamics), e.g.
  python -m wegen_jax.data.synthetic --out /tmp/syn --num 16 --config configs/synthetic.py
  python -m wegen_jax.curation --videos /tmp/syn --out /tmp/dyn --config configs/curate.py:preset=synthetic --label
Stage 3 (PSR and text-to-image data mixed into the dynamics data, data.first_turn) continues stage 2:
  python -m wegen_jax.train --config configs/wegen.py:size=tiny,stage=3 --workdir /tmp/wegen3 \
      --config.data.dir=DATA_DIR --config.init_from=/tmp/wegen2
size=small is the tiny model on a longer recipe (stage 1 2000 steps, stage 2 6000 edit-only steps
with a 32-token instruction slot; ~1.5 h on an idle 2-core CPU for stages 1 and 2 with byte-level
text and the diffusion term, figures in docs/EVAL.md; since 2026-12-08 its stage-2 steps are ~5x
cheaper and it has not been rerun):
  python -m wegen_jax.demo --size small --workdir /tmp/small
arg: size=tiny|small|7b, stage=1|2|3.
"""

import ml_collections

from wegen_jax.config_utils import parse_arg
from wegen_jax.models.presets import LLM_DEFAULTS, LLM_PRESETS, SDXL_UNET, SDXL_VAE, TINY_UNET
from wegen_jax.parallel.sharding import DEFAULT_RULES
from wegen_jax.systems.wegen.config import SDXL_SCHEDULER

# SDXL-base's UNet conditioned as WeGen: 1792-wide EVA features, pooled text_embeds of 1792
_SDXL_UNET = dict(SDXL_UNET, cross_attention_dim=1792, projection_class_embeddings_input_dim=1792 + 6 * 256)


SIZES = {
  "7b": dict(
    model=dict(
      llm=dict(LLM_DEFAULTS, **LLM_PRESETS["wegen_llama2_7b"], remat="full"),
      vision=dict(),  # EVAConfig defaults = EVA-CLIP-E-14-plus at 448 px
      unet=_SDXL_UNET,
      vae=SDXL_VAE,
      unet_remat=True,
      dtype="bfloat16",
      # one scanned body per layer stack (LLM, EVA-E, SDXL's transformer stacks):
      # compiles in minutes instead of 25-60 (docs/SCALING.md)
      scan_layers=True,
      # the Pallas flash kernels on TPU/GPU where the scores reach 1k x 1k (the UNet's
      # 4096/1024-token self-attention, EVA's 1025, the LLM's 1024), XLA elsewhere
      # (the UNet's cross-attention onto 64 tokens, the VAE's 512-wide single head)
      attention_impl="auto",
      # the frozen VAE encoder in 4 passes: at 1024 px its float32 activations take
      # ~1 GiB per image and tensor (14 GiB of temporaries for 16 images per chip)
      vae_encode_slices=4,
    ),
    # The host ships the curated 256-px uint8 frames (curation's frame_size) and the train step
    # resizes them to 448 / 1024 exactly as PIL (data/device_resize.py): ~50 MB of float32 pixels
    # per row and ~160 ms of host work per image otherwise. Rows are built in 8 Grain worker
    # processes (one made ~270 rows/s on 2 cores; one host of 8 H100s at 40% MFU consumes ~76:
    # docs/PERFORMANCE.md).
    data=dict(
      max_len=1024,
      max_images=4,
      image_size=448,
      vae_image_size=1024,
      device_preprocess=True,
      frame_size=256,
      workers=8,
    ),
    batch_size=128,
  ),
  "tiny": dict(
    model=dict(
      # The built-in word-level tokenizer (systems/wegen/tokenizer.py: 474 BPE ids + WeGen's 102)
      # and short_conv=4, a causal width-4 convolution on each attention input (layers/short_conv.py;
      # not in Llama, so this LLM does not export to transformers): with them a query finds the
      # phrase of its place in one attention step ("top left" is two tokens the conv joins). Caption
      # -> features alone (no edits, 1500 steps, 128 held-out scenes, stage-1 tower): held-out
      # feature MSE 0.363 with both, 0.414 words without the conv, 0.446/0.453 bytes without/with
      # it (the mean feature: 1.386); only with both do the drawn objects have their colour and
      # place (docs/CHAT.md). Sequences are 2x shorter than in bytes, so a step is too.
      llm=dict(LLM_DEFAULTS, **dict(LLM_PRESETS["tiny_llama"], vocab_size=576, short_conv=4)),
      # pre-norm blocks: the random frozen tower's post-norm (EVA-E) blocks add unit-variance
      # image-independent vectors (16% of the features' variance is across images,
      # 46% pre-norm); end to end that took held-out frame MAE from 31.0 to 27.0 /255
      vision=dict(image_size=64, patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64, post_norm=False),
      # Stage 1 trains this tower with the UNet (no pretrained tower exists at this size: an
      # information-preserving encoder learned with its decoder); stages 2/3 load it from init_from
      # (WeGenTask.init_components) and keep it frozen. With the timestep range and 1-step sampling
      # below, held-out stage-1 MAE 10.5/255 trained vs 11.0 frozen (1000 steps, t >= 700, full
      # grammar). 7B: off.
      detokenizer_trains_vision=True,
      # The detokenizer draws in one step from t=999 (sampling below) and trains where it samples,
      # t in [900, 1000) (1000 steps, full grammar, frozen tower: held-out MAE 11.0 with [700, 1000),
      # 12.3 over every t). 7B: every t, as the authors.
      train_timesteps=(900, 1000),
      # The UNet also sees the 64 features as an 8x8 grid concatenated to its input (WeGen's SDXL:
      # cross-attention only). Tiny stage 1, 8 fixed frames, 300 steps: a one-step x0 guess from
      # pure noise reaches MAE 9.0/255 with the grid and snr_gamma None, 13.9 without; the grid alone
      # took 20-step sampling from 19.3 to 17.9.
      spatial_features=True,
      # The tiny LLM writes an image through 64 learned queries that share their index embedding
      # with the input image's tokens (model.image_output / image_index_embeddings; 7B: the
      # authors' teacher-forced autoregressive tokens). Stage 2, 600 steps on the demo data:
      # unchanged-region MAE 9.4/255 this way, 17.2 autoregressive (13.0 after 200 steps: its
      # fed-back tokens drift further the longer it trains, and it learns to copy its own previous
      # token, not the input image).
      image_output="queries",
      image_index_embeddings=True,
      # ... and writes the edit, not the whole picture: its output is added to the features of the
      # image it edits (model.image_residual; 7B: off, as the authors). Stage 2, 1500 steps on the
      # demo data: unchanged-region MAE 2.2/255 and objects found 82% with it; without it 6.1 and
      # 0% (the LLM regresses to object-free mean features). Either way the objects do not move yet
      # (position error 0.175, copying through the detokenizer 0.174, the copy baseline 0.13); on
      # one-step jumps they start to, smeared, after 5000 edit-only steps with instruction_slot=128,
      # not after 1500 (docs/EVAL.md); size=small's 6000 such steps on the demo's grammar still copy.
      # A 2-D sine-cosine start of the <img_i> rows, a local warp of the edited features and
      # word-level tokens did not help. Output queries that carry their edit base with changed
      # tokens weighted up (image_inplace, changed_token_weight; off here) erase the named object
      # but do not yet draw it elsewhere, so the frames lose it (docs/EVAL.md, 2026-12-07).
      image_residual=True,
      unet=dict(
        TINY_UNET,
        cross_attention_dim=32,
        in_channels=12 + 32,  # latents + the 8x8 feature grid (spatial_features)
      ),
      # 32-px frames folded 2x2 into 16x16x12 latents (models/patch_autoencoder.py:
      # exact, no training; a VAE learned here in minutes lost held-out colours).
      # shift/scale: mean -0.49 and std 0.317 of the synthetic frames in [-1, 1]
      # (zero-mean, unit-variance latents, as SD3's shift_factor/scaling_factor)
      vae=dict(_class_name="PatchAutoencoder", patch_size=2, shift_factor=-0.49, scaling_factor=3.15, sample_size=32),
      dtype="float32",
      scan_layers=False,
      attention_impl="xla",
    ),
    # every synthetic pair/triple of the demo fits (word-level text: at most 346 tokens with a drawn
    # frame A); 64-px frames, preprocessed on the host (cheap at these sizes; data.device_preprocess
    # does the same on the device)
    data=dict(max_len=320, max_images=3, image_size=64, vae_image_size=32, device_preprocess=False, frame_size=64),
    batch_size=4,
  ),
}
# size=small: the tiny model on a longer schedule: see get_config
SIZES["small"] = SIZES["tiny"]

# SYSTEMS.md §1 optimizer settings. Stage 1 names no clipping; stage 3 repeats stage 2 on new data.
_STAGE_OPT = {
  1: dict(
    lr=1e-4,
    weight_decay=0.01,
    b1=0.9,
    b2=0.999,
    eps=1e-6,
    warmup_steps=2000,
    min_lr_ratio=0.05,
    total_steps=160_000,
    grad_clip=0.0,
    freeze_until={"unet": 12_000},
    stack_leaves=False,  # AdamW over stacks of equal-shape leaves (training/stacked_updates.py)
  ),
  2: dict(
    lr=5e-4,
    weight_decay=0.05,
    b1=0.9,
    b2=0.95,
    eps=1e-6,
    warmup_steps=1000,
    min_lr_ratio=0.05,
    total_steps=30_000,
    grad_clip=1.0,
    freeze_until={},
    stack_leaves=False,
  ),
}
_STAGE_OPT[3] = _STAGE_OPT[2]


INSTRUCTION_SLOT = {"tiny": 0, "small": 32}  # stages 2/3; see data.instruction_slot below
# Steps per stage of the CPU sizes (stage 3 continues stage 2 on its mixed data)
CPU_STEPS = {"tiny": {1: 600, 2: 2000, 3: 3000}, "small": {1: 2000, 2: 6000, 3: 6000}}


def get_config(arg=None):
  args = parse_arg(arg, size="tiny", stage=2)
  size, stage = args["size"], int(args["stage"])
  if size not in SIZES:
    raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
  if stage not in _STAGE_OPT:
    raise ValueError(f"stage={stage}; choose 1 (detokenizer), 2 or 3 (MLLM)")
  preset = SIZES[size]
  c = ml_collections.ConfigDict()
  c.task = "wegen"
  c.stage = stage
  c.seed = 0
  opt = dict(_STAGE_OPT[stage])
  tiny = size in CPU_STEPS  # the CPU sizes: tiny (the demo) and small (its longer recipe)
  if tiny:  # minutes on a CPU: short schedule, larger lr, UNet unfrozen after 10 steps in stage 1
    # (the demo's stage 1, held-out frames redrawn: MAE 4.7/255 after 1000 steps, 5.1 after 800,
    # 5.6 after 600; target 8. Stage 2's moved-object figures are those of 10 steps (docs/EVAL.md);
    # unchanged MAE 2.35/2.34/2.60 after 1500/1000/500 steps, target 12. 600 + 500 steps on
    # 2026-12-07: `make demo` 460 s on an idle host (stage 1 233 s, stage 2 172 s). Since 2026-12-08
    # stage 2 regresses features only (loss_weights below): 2000 steps of 8 rows in 220-250 s, 4x the
    # rows of 500 steps of 4 with the diffusion term, for text-to-image (docs/CHAT.md); the edit
    # figures are the same. Stage 3: 3000 steps (~8 min; PSR rewrites name the prompt's objects in 69% of
    # samples after 3000, 0% after 600: docs/CHAT.md).
    # Figures in this file from before 2026-12-06 were measured with a sampler that clipped x0 to
    # [-1, 1] (stage 1 then read 9.6): compare them with each other only.)
    opt.update(
      total_steps=CPU_STEPS[size][stage],
      warmup_steps=5,
      lr=2e-3,
      freeze_until={"unet": 10} if stage == 1 else {},
    )
  c.total_steps = opt["total_steps"]
  c.log_every = 10 if tiny else 50
  c.ckpt_every = 100 if tiny else 1000  # a tiny save costs ~1 s of a ~0.4 s step
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  c.compilation_cache_dir = ""  # e.g. ~/.cache/wegen_jax/xla: restarts and later stages skip compiling
  c.batch_size = preset["batch_size"] * (2 if tiny else 1)  # the CPU sizes: 8 rows
  c.grad_accum = 1 if stage <= 1 or tiny else 2
  c.optimizer = opt
  # The tiny detokenizer predicts v (SD 2's parameterisation; WeGen's SDXL predicts epsilon): after
  # 400 steps an epsilon UNet drew the same image whatever its condition (held-out MAE 29.4/255
  # with the image's own features, 29.9 with another image's); a v UNet uses it (20.9 vs 28.2).
  train_scheduler = dict(
    SDXL_SCHEDULER, _class_name="DDPMScheduler", **(dict(prediction_type="v_prediction") if tiny else {})
  )
  c.model = dict(
    preset["model"],
    num_image_tokens=64,
    # Min-SNR weights v-prediction by snr/(snr+1): ~0 at the noisiest steps, where the picture
    # comes from the condition alone; the tiny detokenizer weights all steps alike.
    snr_gamma=None if tiny else 5.0,
    train_scheduler=train_scheduler,
    # the tiny detokenizer samples DDPM on the training betas from t=999 (trailing spacing) in
    # one step: its mid-noise predictions are its weakest (x0 error 0.15 at t=300 against 0.09 at
    # t=999), so each extra step adds error (8 frames: 1/2/4/20 steps give MAE 11.5/13.4/15.6/17.5;
    # held-out, trained at t >= 700: 11.0 at 1 step, 14.0 at 2); Euler/DDIM do worse still
    sample_scheduler=dict(train_scheduler, timestep_spacing="trailing") if tiny else SDXL_SCHEDULER,
    # The CPU sizes regress features only (no UNet/VAE pass in stages 2/3: a step ~5x cheaper).
    # The diffusion term through the frozen one-step detokenizer adds nothing there: on the demo's
    # data and stage 1, stage 2 with it (500 steps) and without (2000 steps, the same minutes)
    # scored the same edits (unchanged MAE 2.68 / 2.62, moved objects found 88% / 88%, placed 0.157
    # / 0.158) and the 4x more rows without it are what text-to-image needs (docs/CHAT.md). 7B:
    # the authors' four terms.
    loss_weights=dict(ce=1.0, mse=1.0, cos=1.0, diffusion=0.0 if tiny else 1.0),
    # stages 2/3 run the UNet/VAE on <= 2 images per example (a pair has 1 target, a
    # triple 2), not on every slot; stage 1 trains the detokenizer on every image (0)
    diffusion_images_per_example=0 if stage == 1 else 2,
  )
  # pack=k puts k consecutive records in one row with segment ids (max_len/max_images must hold
  # k of them; diffusion_images_per_example then counts per row). At tiny sizes it gained nothing
  # (bench/packing_bench.py: per-image work dominates the step), so the default is one per row.
  # read_threads: Grain threads building rows in each process (Python under the GIL: more than
  # one or two slow it down, data/loader.process_batches); workers: Grain worker processes.
  c.data = dict(dict(workers=0, read_threads=1), **preset["data"], dir="", tokenizer="", num_image_tokens=64, pack=1)
  # Where frame A of a record comes from (systems/wegen/psr.py): the input image (editing), its
  # caption (text-to-image), its short prompt (drawn directly), or a PSR turn (short prompt ->
  # the detailed caption, then A). The tiny default also learns text-to-image in stage 2, so a
  # chat can start from text alone; stage 3 adds the PSR and short-prompt data.
  # size=small's stage 2 trains on edits only: on one-step jumps, 5000 such steps with the slot
  # below moved the named objects (smeared) where 1500 mixed steps copied (docs/EVAL.md); its
  # text-to-image comes with stage 3.
  c.data.first_turn = {
    2: dict(image=0.5, caption=0.5) if size == "tiny" else dict(image=1.0),
    3: dict(image=0.25, caption=0.25, short=0.25, psr=0.25),
  }.get(stage, {})
  # Tiny only, stages 2/3: a fixed-length instruction slot (systems/wegen/sequences.py), e.g. 32
  # (holds 97% of the synthetic instructions in words; longer ones are kept whole; 128 did in
  # bytes). An edit's image token i then sits at one fixed offset from token i of the image it
  # edits, where instructions of any length (3..43 words) vary it. Off for the demo: in bytes, on
  # its data and stage 1 (2026-12-05), it gave unchanged-region MAE 14.1 vs 15.5 with training seed
  # 0 but 22.0 vs 21.1 with seed 1, object_found 0% and position error 0.5 either way
  # (docs/EVAL.md); with image_residual and the unclipped sampler, 1500 steps: the same figures as
  # without (position error 0.175 both). size=small uses it (its edit-only recipe was measured with
  # it). 0 = the authors' layout (7B).
  c.data.instruction_slot = INSTRUCTION_SLOT[size] if tiny and stage > 1 else 0
  if tiny and stage > 1:  # a drawn frame A adds its caption (and a PSR turn's rewrite) to a triple
    drawn_a = any(k != "image" for k in c.data.first_turn)
    c.data.max_len = (384 if drawn_a else 320) + 2 * c.data.instruction_slot  # a triple pads two instructions
  # Local pretrained weights for a fresh run (wegen_jax/systems/wegen/pretrained.py), e.g. 7B stage 1:
  #   --config.pretrained.vision=/w/EVA02_CLIP_E_psz14_plus_s9B.visual.pt
  #   --config.pretrained.unet=/w/sdxl-base/unet --config.pretrained.vae=/w/sdxl-base/vae
  # stage 2: --config.pretrained.llm=/w/Llama-2-7b-chat-hf (+ init_from the stage-1 run), or the
  # authors' releases: --config.pretrained.detokenizer=... / --config.pretrained.mllm=...
  c.pretrained = dict(llm="", vision="", unet="", vae="", detokenizer="", mllm="")
  # Stage 2 starts from stage 1's UNet, stage 3 from all of stage 2 (a run directory each):
  #   --config.init_from=/tmp/wegen1   (nothing is copied when the run resumes its own checkpoint)
  c.init_from = ""
  c.init_components = {1: (), 2: ("unet", "vae"), 3: ("llm", "input_proj", "output_proj", "unet", "vae")}[stage]
  # Sampling defaults (every system's config calls them `sampling`; a Request's options override
  # them): the image's diffusion steps and guidance, and the text decoding (max_new_tokens 0 =
  # room for one image). The tiny v-prediction detokenizer draws best unguided: held-out MAE
  # 22.5/255 at scale 1, 32.6 at 2 (WeGen's 7B samples use 7).
  c.sampling = dict(
    num_steps=1 if tiny else 50,
    guidance_scale=1.0 if tiny else 7.0,
    var_cfg_scale=1.0,
    max_new_tokens=0,
    temperature=0.0,
    # prompt self-rewriting (Request.options['psr']): the rewrite is sampled at this temperature,
    # at most psr_max_tokens long, then the image is drawn from it
    psr=False,
    psr_temperature=1.0,
    psr_max_tokens=192 if tiny else 256,
  )
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  c.sharding_rules = [list(r) for r in DEFAULT_RULES]
  return c
