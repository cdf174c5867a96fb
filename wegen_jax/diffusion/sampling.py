"""Sampling pipeline: conditioning -> latents -> uint8 images, one compiled program per shape.

The denoising loop is a `lax.fori_loop` over the scheduler's `Plan`; each step makes one
batched UNet call over all guidance branches. Latents stay NHWC inside the loop (the UNet's
own layout) and come out NCHW. Randomness comes only from `key` (initial noise and, for DDPM,
per-step noise from `fold_in(key, i)`), so a key fixes the images.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx, struct

from wegen_jax.diffusion.guidance import NoGuidance, split_branches


@struct.dataclass
class Conditioning:
  """UNet conditioning for all guidance branches, branch-major along the batch ([K*B, ...])."""

  encoder_hidden_states: jax.Array  # [K*B, S, D]
  text_embeds: jax.Array | None = None  # [K*B, P] (SDXL text_time)
  time_ids: jax.Array | None = None  # [K*B, 6]
  concat_latents: jax.Array | None = None  # [K*B, C', h, w] extra input channels (GoT)

  @property
  def added_cond_kwargs(self) -> dict | None:
    if self.text_embeds is None:
      return None
    return {"text_embeds": self.text_embeds, "time_ids": self.time_ids}


def denoise_loop(unet, scheduler, plan, cond: Conditioning, latents, *, guidance=NoGuidance(), key=None):
  """Runs all steps of `plan` from initial noise `latents` [B,C,h,w] (unscaled N(0,1)); returns
  the final latents [B,C,h,w]. key: one key, or one per row [B] (with `latents` given). Call it
  under jit (see `sample_latents`)."""
  k = guidance.num_branches
  x = jnp.transpose(latents, (0, 2, 3, 1)) * plan.init_noise_sigma
  extra = None if cond.concat_latents is None else jnp.transpose(cond.concat_latents, (0, 2, 3, 1))
  key = jax.random.key(0) if key is None else key

  def body(i, x):
    xin = scheduler.scale_model_input(plan, x, i)
    xin = jnp.concatenate([xin] * k, axis=0) if k > 1 else xin
    if extra is not None:
      xin = jnp.concatenate([xin, extra.astype(xin.dtype)], axis=-1)
    eps = unet.forward_nhwc(xin, plan.timesteps[i], cond.encoder_hidden_states, cond.added_cond_kwargs)
    eps = guidance.combine(split_branches(eps, k)).astype(x.dtype)
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim:  # one key per row: its own step noise
      noise = jax.vmap(lambda r: jax.random.normal(jax.random.fold_in(r, i), x.shape[1:], x.dtype))(key)
      return scheduler.step(plan, eps, i, x, noise=noise)
    return scheduler.step(plan, eps, i, x, key=jax.random.fold_in(key, i))

  x = jax.lax.fori_loop(0, plan.num_steps, body, x)
  return jnp.transpose(x, (0, 3, 1, 2))


@nnx.jit(static_argnames=("scheduler", "num_steps", "guidance"))
def _sample(unet, scheduler, num_steps, cond, latents, guidance, key):
  return denoise_loop(unet, scheduler, scheduler.plan(num_steps), cond, latents, guidance=guidance, key=key)


def initial_noise(key, batch: int, channels: int, height: int, width: int) -> jax.Array:
  return jax.random.normal(jax.random.fold_in(key, 0x5EED), (batch, channels, height, width), jnp.float32)


def sample_latents(
  unet, scheduler, cond: Conditioning, key, *, num_steps: int, latent_size=None, latents=None, guidance=NoGuidance()
) -> jax.Array:
  """Final latents [B,C,h,w] (in the UNet's scaled latent space). Initial noise is drawn from
  `key` for `latent_size` (h, w) unless `latents` is given."""
  if latents is None:
    b = cond.encoder_hidden_states.shape[0] // guidance.num_branches
    latents = initial_noise(key, b, unet.cfg.out_channels, *latent_size)
  return _sample(unet, scheduler, num_steps, cond, latents, guidance, key)


def to_uint8(images) -> jax.Array:
  """[B,C,H,W] in [-1, 1] -> [B,H,W,C] uint8, rounding like diffusers' image processor."""
  x = jnp.clip(images.astype(jnp.float32) / 2 + 0.5, 0, 1)
  return jnp.round(jnp.transpose(x, (0, 2, 3, 1)) * 255).astype(jnp.uint8)


@nnx.jit
def decode_images(vae, latents) -> jax.Array:
  """Scaled latents -> uint8 images [B,H,W,C]."""
  return to_uint8(vae.decode(vae.from_latents(latents)))


def generate(
  unet, vae, scheduler, cond: Conditioning, key, *, num_steps: int, height: int, width: int, guidance=NoGuidance()
) -> jax.Array:
  """Images [B,H,W,3] uint8 for the conditioning; deterministic for `key`."""
  f = vae.downsample_factor
  if height % f or width % f:
    raise ValueError(f"height/width {height}x{width} must be multiples of the VAE factor {f}")
  latents = sample_latents(
    unet, scheduler, cond, key, num_steps=num_steps, latent_size=(height // f, width // f), guidance=guidance
  )
  return decode_images(vae, latents)
