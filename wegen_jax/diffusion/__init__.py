"""Diffusion: noise schedulers, guidance, the sampling loop and the training loss."""

from wegen_jax.diffusion.guidance import ClassifierFree, MultiBranch, NoGuidance, split_branches
from wegen_jax.diffusion.losses import diffusion_loss, min_snr_weights, sample_noise
from wegen_jax.diffusion.sampling import (
  Conditioning,
  decode_images,
  denoise_loop,
  generate,
  initial_noise,
  sample_latents,
  to_uint8,
)
from wegen_jax.diffusion.schedulers import (
  DDIMScheduler,
  DDPMScheduler,
  EulerDiscreteScheduler,
  Plan,
  scheduler_from_config,
)
