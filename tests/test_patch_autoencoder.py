"""The parameter-free folded-pixel autoencoder of the tiny default: exact, and a drop-in for
AutoencoderKL in the diffusion sampler and the WeGen model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wegen_jax.diffusion.sampling import decode_images
from wegen_jax.models.patch_autoencoder import PatchAutoencoder, PatchAutoencoderConfig


def test_fold_is_space_to_depth_and_exactly_invertible():
  ae = PatchAutoencoder(PatchAutoencoderConfig(patch_size=2, shift_factor=-0.5, scaling_factor=3.0))
  x = jax.random.uniform(jax.random.key(0), (2, 3, 8, 6), minval=-1, maxval=1)
  post = ae.encode(x)
  assert post.mean.shape == (2, 12, 4, 3) and ae.downsample_factor == 2
  # channel c*4 + dy*2 + dx of latent (i, j) is pixel (2i + dy, 2j + dx) of channel c
  np.testing.assert_array_equal(post.mean[1, 1 * 4 + 1 * 2 + 0, 3, 2], x[1, 1, 7, 4])
  np.testing.assert_array_equal(post.sample(jax.random.key(1)), post.mean)  # a point mass
  np.testing.assert_array_equal(ae.decode(post.mode()), x)
  latents = ae.to_latents(post.mode())
  np.testing.assert_allclose(latents, (post.mean + 0.5) * 3.0, rtol=1e-6)
  np.testing.assert_allclose(ae.from_latents(latents), post.mean, atol=1e-6)
  assert not nnx.state(ae, nnx.Param)  # nothing to train, nothing to checkpoint


def test_decoded_images_are_the_input_pixels():
  ae = PatchAutoencoder(PatchAutoencoderConfig(shift_factor=-0.49, scaling_factor=3.15))
  pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
  x = jnp.asarray(pixels.transpose(0, 3, 1, 2) / 127.5 - 1.0, jnp.float32)
  np.testing.assert_array_equal(np.asarray(decode_images(ae, ae.to_latents(ae.encode(x).mode()))), pixels)


def test_bad_input_says_what_is_wrong():
  ae = PatchAutoencoder(PatchAutoencoderConfig(patch_size=4))
  with pytest.raises(ValueError, match="not a multiple of the patch size 4"):
    ae.encode(jnp.zeros((1, 3, 10, 12)))
  with pytest.raises(ValueError, match="unknown keys \\['block_out_channels'\\]"):
    PatchAutoencoderConfig.from_dict({"_class_name": "PatchAutoencoder", "block_out_channels": [16]})


def test_wegen_builds_with_either_autoencoder():
  from wegen_jax.configs.wegen import get_config
  from wegen_jax.models.vae import VAEConfig
  from wegen_jax.systems.wegen.config import WeGenConfig
  from wegen_jax.systems.wegen.model import WeGen

  tiny = WeGenConfig.from_dict(get_config("size=tiny,stage=1").model)
  assert isinstance(nnx.eval_shape(lambda: WeGen(tiny, rngs=nnx.Rngs(0))).vae, PatchAutoencoder)
  assert tiny.unet.out_channels == tiny.vae.latent_channels == 12
  assert tiny.unet.in_channels == 12 + tiny.vision.width  # + the feature grid (spatial_features)
  real = WeGenConfig.from_dict(get_config("size=7b,stage=1").model)  # the SDXL VAE
  assert isinstance(real.vae, VAEConfig) and real.vae.block_out_channels == (128, 256, 512, 512)
