"""GoTConfig, built from `config.model` (configs/got.py): the MLLM, SSGM sizes, UNet, VAE, LoRA,
schedulers and the training-time conditioning drop."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from wegen_jax.convert.diffusers import unet_config_from_diffusers
from wegen_jax.diffusion.guidance import MultiBranch
from wegen_jax.diffusion.schedulers import scheduler_from_config
from wegen_jax.models.llm import LLMConfig
from wegen_jax.models.patch_autoencoder import PatchAutoencoderConfig
from wegen_jax.models.qwen2_5_vl import QwenVisionConfig
from wegen_jax.models.unet import UNetConfig
from wegen_jax.models.vae import VAEConfig
from wegen_jax.systems.wegen.config import SDXL_SCHEDULER, _autoencoder_config, _plain

LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
# SYSTEMS.md §2: (a_t, a_s, a_r) per mode; the authors' DDPM sampler on SDXL's betas, 50 steps.
GUIDANCE = {"t2i": MultiBranch(a_t=7.5, a_s=4.0, a_r=0.0), "edit": MultiBranch(a_t=4.0, a_s=3.0, a_r=1.5)}
GOT_SCHEDULER = dict(SDXL_SCHEDULER, _class_name="DDPMScheduler")


@dataclasses.dataclass(frozen=True)
class GoTConfig:
  llm: LLMConfig
  unet: UNetConfig  # in_channels = 3 x latent channels: [noisy | reference | spatial]
  vae: VAEConfig | PatchAutoencoderConfig
  # Qwen2.5-VL's vision tower (frozen): editing shows the MLLM the source image, resized to
  # vision_image_size (448 -> 256 tokens), at its <|image_pad|> tokens (image_token_id). None: text only.
  vision: QwenVisionConfig | None = None
  vision_image_size: int = 448
  image_token_id: int = 151655
  num_gen_tokens: int = 64
  pooled_dim: int = 1280  # SDXL's pooled text_embeds width
  lora_rank: int = 32  # 0: no LoRA (the whole LLM trains)
  lora_alpha: float = 32.0
  lora_dropout: float = 0.05
  lora_targets: tuple[str, ...] = LORA_TARGETS
  train_scheduler: Mapping[str, Any] | tuple = ()
  sample_scheduler: Mapping[str, Any] | tuple = ()
  num_sample_steps: int = 50
  noise_offset: float = 0.1
  cond_drop: float = 0.05  # per partial combination: spatial; text + spatial; all
  snr_gamma: float | None = None  # the paper names plain MSE
  vae_encode_slices: int = 1

  def __post_init__(self):
    for name in ("train_scheduler", "sample_scheduler"):
      v = getattr(self, name)
      if isinstance(v, Mapping):
        object.__setattr__(self, name, tuple(sorted(v.items())))
    object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
    lc = self.vae.latent_channels
    if self.unet.in_channels != 3 * lc or self.unet.out_channels != lc:
      raise ValueError(
        f"GoT's UNet takes [noisy | reference | spatial] latents: in_channels must be 3 x {lc} = {3 * lc} "
        f"and out_channels {lc}, got {self.unet.in_channels} / {self.unet.out_channels}"
      )
    if self.unet.cross_attention_dim[0] != self.llm.hidden_size:
      raise ValueError(
        f"UNet cross_attention_dim {self.unet.cross_attention_dim[0]} must equal the MLLM width "
        f"{self.llm.hidden_size} (the semantic projector is {self.llm.hidden_size} -> {self.llm.hidden_size})"
      )
    want = self.pooled_dim + 6 * (self.unet.addition_time_embed_dim or 0)
    if self.unet.addition_embed_type != "text_time" or self.unet.projection_class_embeddings_input_dim != want:
      raise ValueError(
        f"GoT's UNet needs SDXL's text_time add-embedding with input {self.pooled_dim} + 6 x "
        f"{self.unet.addition_time_embed_dim} = {want}; got {self.unet.addition_embed_type} / "
        f"{self.unet.projection_class_embeddings_input_dim}"
      )

  @property
  def vision_tokens(self) -> int:
    """<|image_pad|> tokens of one source image (0 without a vision tower)."""
    if self.vision is None:
      return 0
    side = self.vision_image_size // self.vision.patch_size
    return side * side // self.vision.merge_unit

  def train_noise_scheduler(self):
    return scheduler_from_config(dict(dict(self.train_scheduler) or GOT_SCHEDULER, _class_name="DDPMScheduler"))

  def sampler(self):
    return scheduler_from_config(dict(self.sample_scheduler) or GOT_SCHEDULER)

  @classmethod
  def from_dict(cls, d) -> "GoTConfig":
    """From `config.model`: {llm: LLMConfig fields, unet: diffusers UNet config (12 input
    channels for SDXL), vae: diffusers VAE config or PatchAutoencoder, dtype, lora_*, ...}."""
    d = _plain(d)
    dtype = d.get("dtype", "float32")
    extra = dict(dtype=dtype)
    for key in ("scan_layers", "attention_impl"):  # optional: one setting for the LLM, vision tower and UNet
      if key in d:
        extra[key] = d[key]
    names = {f.name for f in dataclasses.fields(cls)} - {"llm", "unet", "vae", "vision"}
    vision = d.get("vision") or None
    return cls(
      llm=LLMConfig(**{**d["llm"], **extra}),
      vision=None if vision is None else QwenVisionConfig(**{**extra, **vision}),  # its own settings win
      unet=unet_config_from_diffusers(d["unet"], **extra, remat=bool(d.get("unet_remat", False))),
      vae=_autoencoder_config(d["vae"], dtype, d.get("attention_impl")),
      **{k: v for k, v in d.items() if k in names},
    )
