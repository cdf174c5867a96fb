"""A parameter-free autoencoder: latents are the image's pixels folded into channels
(space-to-depth), [B, 3, H, W] -> [B, 3·p², H/p, W/p], decoded exactly by the inverse.

It stands in for the SDXL VAE in the embedded tiny default: a VAE learned from scratch on a
CPU in minutes reconstructs held-out frames worse than their mean colour, which caps every
image the detokenizer draws; folded pixels are exact, need no training stage, and keep the
UNet's latent grid (and cost) of a 2x VAE. Same interface as AutoencoderKL (encode ->
DiagonalGaussian, decode, to_latents / from_latents, downsample_factor).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from flax import nnx

from wegen_jax.models.vae import DiagonalGaussian, LatentScaling


@dataclasses.dataclass(frozen=True)
class PatchAutoencoderConfig:
  patch_size: int = 2
  in_channels: int = 3
  scaling_factor: float = 1.0  # 1/std of the data's pixels: unit-variance latents
  shift_factor: float | None = None
  sample_size: Any = 32
  dtype: str = "float32"

  @property
  def latent_channels(self) -> int:
    return self.in_channels * self.patch_size**2

  def replace(self, **kw) -> "PatchAutoencoderConfig":
    return dataclasses.replace(self, **kw)

  @classmethod
  def from_dict(cls, d, **overrides) -> "PatchAutoencoderConfig":
    """From a config dict with `_class_name: PatchAutoencoder` (unknown keys are an error)."""
    d = {k: v for k, v in dict(d).items() if k != "_class_name"}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"PatchAutoencoder config: unknown keys {unknown}; known: {sorted(names)}")
    return cls(**d).replace(**{k: v for k, v in overrides.items() if k in names})


class PatchAutoencoder(LatentScaling, nnx.Module):
  def __init__(self, cfg: PatchAutoencoderConfig, *, rngs: nnx.Rngs | None = None):
    del rngs  # no parameters
    self.cfg = cfg

  @property
  def downsample_factor(self) -> int:
    return self.cfg.patch_size

  def encode(self, x) -> DiagonalGaussian:
    """x [B, C, H, W] -> a point mass at the folded pixels [B, C·p², H/p, W/p]."""
    b, c, h, w = x.shape
    p = self.cfg.patch_size
    if h % p or w % p:
      raise ValueError(f"image {h}x{w} is not a multiple of the patch size {p}")
    z = x.reshape(b, c, h // p, p, w // p, p).transpose(0, 1, 3, 5, 2, 4).reshape(b, c * p * p, h // p, w // p)
    z = z.astype(jnp.dtype(self.cfg.dtype))
    return DiagonalGaussian(z, jnp.full_like(z, -jnp.inf))  # std 0: sampling returns the mean exactly

  def decode(self, z) -> jnp.ndarray:
    b, cpp, h, w = z.shape
    p = self.cfg.patch_size
    c = cpp // (p * p)
    return z.reshape(b, c, p, p, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(b, c, h * p, w * p)

  def __call__(self, x, key=None):
    return self.decode(self.encode(x).mode())
