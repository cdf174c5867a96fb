"""WeGenConfig: everything the system needs, built from `config.model` (see configs/wegen.py).

The UNet and VAE are described by diffusers config.json dicts (SDXL's own files for the real
model), the LLM by LLMConfig fields and the vision tower by EVAConfig fields, so the same
dicts serve conversion and construction.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from wegen_jax.convert.diffusers import unet_config_from_diffusers, vae_config_from_diffusers
from wegen_jax.diffusion.schedulers import scheduler_from_config
from wegen_jax.models.eva import EVAConfig
from wegen_jax.models.llm import LLMConfig
from wegen_jax.models.unet import UNetConfig
from wegen_jax.models.patch_autoencoder import PatchAutoencoderConfig
from wegen_jax.models.vae import VAEConfig

# SDXL-base's scheduler_config.json (EulerDiscrete for sampling; the same betas train as DDPM).
SDXL_SCHEDULER = dict(
  _class_name="EulerDiscreteScheduler",
  num_train_timesteps=1000,
  beta_start=0.00085,
  beta_end=0.012,
  beta_schedule="scaled_linear",
  prediction_type="epsilon",
  timestep_spacing="leading",
  steps_offset=1,
  # as SDXL-base's scheduler_config.json: latents are not clipped to [-1, 1]. A DDPM/DDIM made
  # from this dict would otherwise clip its x0 estimate (their default, for pixel-space models),
  # which flattens every colour of the unit-variance latents (tiny stage 1: latent MSE 0.23
  # against 0.024 unclipped)
  clip_sample=False,
)


def _plain(x):
  """ConfigDict / FrozenConfigDict / lists -> plain dicts and tuples."""
  if hasattr(x, "to_dict"):
    x = x.to_dict()
  if isinstance(x, Mapping):
    return {k: _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return tuple(_plain(v) for v in x)
  return x


def _autoencoder_config(d, dtype, attention_impl=None):
  """A diffusers AutoencoderKL config, or `_class_name: PatchAutoencoder` (folded pixels)."""
  if d.get("_class_name") == "PatchAutoencoder":
    return PatchAutoencoderConfig.from_dict(d, dtype=dtype)
  extra = {} if attention_impl is None else dict(attention_impl=attention_impl)
  return vae_config_from_diffusers(d, dtype=dtype, **extra)


@dataclasses.dataclass(frozen=True)
class WeGenConfig:
  llm: LLMConfig
  vision: EVAConfig
  unet: UNetConfig
  vae: VAEConfig | PatchAutoencoderConfig  # the SDXL VAE; the tiny default folds pixels
  num_image_tokens: int = 64
  train_scheduler: Mapping[str, Any] | tuple = ()  # diffusers scheduler config (DDPM training)
  sample_scheduler: Mapping[str, Any] | tuple = ()  # diffusers scheduler config (sampling)
  snr_gamma: float | None = 5.0
  # (lo, hi): the diffusion loss draws timesteps from [lo, hi) (empty: all, as the authors)
  train_timesteps: tuple = ()
  loss_weights: Mapping[str, float] | tuple = ()  # ce, mse, cos, diffusion
  # Images per example that go through the UNet for the diffusion loss (0: every slot);
  # 7B stage 2 sets 2 (a pair has 1 target, a triple 2) of its 4 slots.
  diffusion_images_per_example: int = 0
  # Sequential passes the frozen VAE encoder splits its images into (diffusers' enable_slicing):
  # at 1024 px its float32 activations take ~1 GiB per image and 128-channel tensor.
  vae_encode_slices: int = 1
  # Stage 1 trains the vision tower with the UNet (frozen again in stages 2/3, which load it
  # with init_components). Only for towers with no pretrained weights (the tiny default): a
  # random frozen tower keeps too little of the image for the UNet to redraw it.
  detokenizer_trains_vision: bool = False
  # The detokenizer also sees its Q features as a sqrt(Q) x sqrt(Q) grid, upsampled to the latent
  # size and concatenated to the UNet input (InstructPix2Pix-style channels; the UNet's in_channels
  # = latent channels + vision width). WeGen's SDXL conditions by cross-attention alone (False);
  # a tiny UNet trained for minutes cannot learn where each token goes through cross-attention.
  spatial_features: bool = False
  # How the LLM writes an image: "autoregressive" (the authors': each `<img_i>` input is the
  # previous token's features, teacher-forced in training and fed back at inference) or "queries"
  # (the `<img_i>` embeddings stay learned queries, as SEED-X's and GoT's: every output token is
  # read from the context, never from the previous output token).
  image_output: str = "autoregressive"
  # Input images' projected features are added to their `<img_i>` embeddings instead of replacing
  # them (the authors replace). With "queries" the output query `<img_i>` then finds input token i
  # by the embedding both share, so copying the input image is one attention step.
  image_index_embeddings: bool = False
  # A generated image's features = the features of the image before it in the sequence (the one
  # it edits; zeros for the first image) + the output projector's output: the LLM writes the
  # edit, not the whole picture (InstructPix2Pix conditions on the source image the same way).
  # Needs "queries" (no fed-back tokens). The authors' 7B writes whole images (False).
  image_residual: bool = False
  # Each output query of an edit also carries the projected features of the image it edits
  # (its edit base), added at the position whose state predicts that token (one before its
  # `<img_i>`): an output token starts from what it replaces, so erasing and drawing are local
  # choices rather than a search of the context. Needs image_residual. The authors' 7B: off.
  image_inplace: bool = False
  # The mse/cos regression weighs a token 1 + this when its target differs from its edit base
  # (mean square difference > changed_token_threshold), then renormalises each image's weights to
  # mean 1: the few tokens an edit changes are not outweighed by the many it keeps. 0 = the
  # authors' plain means.
  changed_token_weight: float = 0.0
  changed_token_threshold: float = 0.1

  def __post_init__(self):
    if self.image_output not in ("autoregressive", "queries"):
      raise ValueError(f"image_output={self.image_output!r}; choose 'autoregressive' or 'queries'")
    if self.image_index_embeddings and self.image_output != "queries":
      raise ValueError("image_index_embeddings needs image_output='queries' (fed-back features replace embeddings)")
    if self.image_residual and self.image_output != "queries":
      raise ValueError("image_residual needs image_output='queries' (a fed-back token cannot carry the residual)")
    if self.image_inplace and not self.image_residual:
      raise ValueError("image_inplace needs image_residual (the queries carry the edit base it defines)")
    for name in ("train_scheduler", "sample_scheduler", "loss_weights"):  # hashable (jit static)
      v = getattr(self, name)
      if isinstance(v, Mapping):
        object.__setattr__(self, name, tuple(sorted(v.items())))
    q = math.isqrt(self.num_image_tokens)
    gh, gw = self.vision.grid
    if q * q != self.num_image_tokens or gh != gw or gh % q:
      raise ValueError(
        f"num_image_tokens={self.num_image_tokens} must be a square whose side divides the "
        f"vision grid {self.vision.grid} (image_size {self.vision.image_size} / patch "
        f"{self.vision.patch_size})"
      )
    if self.spatial_features and self.unet.in_channels != self.vae.latent_channels + self.vision.width:
      raise ValueError(
        f"spatial_features: UNet in_channels is {self.unet.in_channels}; the latents "
        f"({self.vae.latent_channels}) + the feature grid ({self.vision.width}) need "
        f"{self.vae.latent_channels + self.vision.width}"
      )
    if self.unet.cross_attention_dim[0] != self.vision.width:
      raise ValueError(
        f"UNet cross_attention_dim {self.unet.cross_attention_dim} must equal the vision "
        f"width {self.vision.width}: the detokenizer attends to the 64 image features"
      )
    if self.unet.addition_embed_type == "text_time":
      want = self.vision.width + 6 * self.unet.addition_time_embed_dim
      if self.unet.projection_class_embeddings_input_dim != want:
        raise ValueError(
          f"UNet projection_class_embeddings_input_dim is "
          f"{self.unet.projection_class_embeddings_input_dim}; the pooled features "
          f"({self.vision.width}) + 6 time ids x {self.unet.addition_time_embed_dim} need {want}"
        )

  @property
  def pool(self) -> int:
    """Average-pool kernel over the vision grid (4 for 32x32 -> 8x8)."""
    return self.vision.grid[0] // math.isqrt(self.num_image_tokens)

  def weight(self, name: str) -> float:
    return dict(self.loss_weights).get(name, 1.0)

  def train_noise_scheduler(self):
    d = dict(dict(self.train_scheduler) or SDXL_SCHEDULER, _class_name="DDPMScheduler")
    return scheduler_from_config(d)

  def sampler(self):
    return scheduler_from_config(dict(self.sample_scheduler) or SDXL_SCHEDULER)

  @classmethod
  def from_dict(cls, d) -> "WeGenConfig":
    """From `config.model`: {llm: LLMConfig fields, vision: EVAConfig fields, unet: diffusers UNet
    config, vae: diffusers VAE config, num_image_tokens, schedulers, snr_gamma, loss_weights,
    dtype: compute dtype of every part; optional scan_layers for the three towers and
    attention_impl for them and the VAE}."""
    d = _plain(d)
    dtype = d.get("dtype", "float32")
    extra = dict(dtype=dtype)
    for key in ("scan_layers", "attention_impl"):  # optional: one setting for all three parts
      if key in d:
        extra[key] = d[key]
    return cls(
      llm=LLMConfig(**{**d["llm"], **extra}),
      vision=EVAConfig(**{**d["vision"], **extra}),
      unet=unet_config_from_diffusers(d["unet"], **extra, remat=bool(d.get("unet_remat", False))),
      vae=_autoencoder_config(d["vae"], dtype, d.get("attention_impl")),
      num_image_tokens=d.get("num_image_tokens", 64),
      train_scheduler=d.get("train_scheduler", {}),
      sample_scheduler=d.get("sample_scheduler", {}),
      snr_gamma=d.get("snr_gamma", 5.0),
      train_timesteps=tuple(d.get("train_timesteps") or ()),
      loss_weights=d.get("loss_weights", {}),
      diffusion_images_per_example=int(d.get("diffusion_images_per_example") or 0),
      vae_encode_slices=int(d.get("vae_encode_slices") or 1),
      detokenizer_trains_vision=bool(d.get("detokenizer_trains_vision", False)),
      spatial_features=bool(d.get("spatial_features", False)),
      image_output=d.get("image_output", "autoregressive"),
      image_index_embeddings=bool(d.get("image_index_embeddings", False)),
      image_residual=bool(d.get("image_residual", False)),
      image_inplace=bool(d.get("image_inplace", False)),
      changed_token_weight=float(d.get("changed_token_weight", 0.0)),
      changed_token_threshold=float(d.get("changed_token_threshold", 0.1)),
    )
