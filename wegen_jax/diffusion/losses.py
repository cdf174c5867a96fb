"""Diffusion training loss: noise-prediction MSE with Min-SNR-gamma weighting and noise offset."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def min_snr_weights(scheduler, t, gamma: float | None):
  """Per-sample weights min(SNR, gamma) / SNR (epsilon), / (SNR + 1) (v-prediction), 1 for x0
  targets (arXiv 2303.09556; diffusers' train_text_to_image). gamma None: all ones."""
  if gamma is None:
    return jnp.ones(jnp.shape(t), jnp.float32)
  snr = scheduler.snr(t)
  w = jnp.minimum(snr, gamma)
  if scheduler.prediction_type == "epsilon":
    return w / snr
  if scheduler.prediction_type == "v_prediction":
    return w / (snr + 1)
  return jnp.ones_like(snr)


def sample_noise(key, shape, noise_offset: float = 0.0):
  """N(0, I) plus `noise_offset` x N(0, 1) per (sample, channel): lets the model learn very dark or
  bright images (diffusers' --noise_offset)."""
  k1, k2 = jax.random.split(key)
  noise = jax.random.normal(k1, shape, jnp.float32)
  if not (isinstance(noise_offset, (int, float)) and noise_offset == 0):
    noise = noise + noise_offset * jax.random.normal(k2, shape[:2] + (1,) * (len(shape) - 2), jnp.float32)
  return noise


def diffusion_loss(
  unet,
  scheduler,
  latents,
  encoder_hidden_states,
  key,
  *,
  added_cond_kwargs=None,
  concat_latents=None,
  snr_gamma: float | None = 5.0,
  noise_offset: float = 0.0,
  t_range: tuple[int, int] | None = None,
  return_aux: bool = False,
):
  """Mean weighted MSE for clean latents [B,C,h,w] (already scaled by the VAE's scaling_factor).

  concat_latents [B,C',h,w]: extra UNet input channels concatenated after the noisy latents
  (GoT's reference and spatial latents). t_range (lo, hi): timesteps drawn from [lo, hi) instead of
  every training step (a sampler that only queries the noisiest steps trains where it samples)."""
  kt, kn = jax.random.split(key)
  b = latents.shape[0]
  lo, hi = t_range or (0, scheduler.num_train_timesteps)
  t = jax.random.randint(kt, (b,), lo, hi)
  noise = sample_noise(kn, latents.shape, noise_offset)
  noisy = scheduler.add_noise(latents, noise, t)
  x = noisy if concat_latents is None else jnp.concatenate([noisy, concat_latents.astype(noisy.dtype)], 1)
  pred = unet(x, t, encoder_hidden_states, added_cond_kwargs).astype(jnp.float32)
  target = scheduler.training_target(latents, noise, t)
  per_sample = jnp.mean(jnp.square(pred - target), axis=tuple(range(1, pred.ndim)))
  loss = jnp.mean(per_sample * min_snr_weights(scheduler, t, snr_gamma))
  return (loss, {"t": t, "mse": per_sample}) if return_aux else loss
