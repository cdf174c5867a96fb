"""Where the tiny WeGen recipe departs from the authors' (and 7B does not): the detokenizer's
spatial feature grid, each token over its own block of the latents."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wegen_batches import tiny_config
from wegen_jax.systems.wegen import WeGenConfig
from wegen_jax.systems.wegen.model import WeGen


def _abstract(cfg):
  return nnx.eval_shape(lambda: WeGen(cfg, rngs=nnx.Rngs(0)))


def test_each_token_lands_on_its_grid_block():
  cfg = WeGenConfig.from_dict(tiny_config(stage=1).model)
  assert cfg.spatial_features
  model = _abstract(cfg)
  q, width = cfg.num_image_tokens, cfg.vision.width
  features = jnp.broadcast_to(jnp.arange(q, dtype=jnp.float32)[None, :, None], (2, q, width))
  grid = np.asarray(model.spatial_condition(features, (16, 16)))
  assert grid.shape == (2, width, 16, 16)
  rows, cols = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
  np.testing.assert_array_equal(grid[1, 5], (rows // 2) * 8 + cols // 2)  # row-major, as pooled
  with pytest.raises(ValueError, match="not a multiple"):
    model.spatial_condition(features, (12, 12))


def test_off_is_cross_attention_only_and_a_wrong_unet_is_refused():
  cfg = WeGenConfig.from_dict(tiny_config(stage=1).model)
  off = _abstract(dataclasses.replace(cfg, spatial_features=False))
  assert off.spatial_condition(jnp.zeros((1, cfg.num_image_tokens, cfg.vision.width)), (16, 16)) is None
  with pytest.raises(ValueError, match="in_channels"):
    dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, in_channels=cfg.vae.latent_channels))


def test_the_7b_detokenizer_is_the_authors_cross_attention_only():
  from configs.wegen import get_config

  real = WeGenConfig.from_dict(get_config("size=7b,stage=1").model)
  assert not real.spatial_features and real.unet.in_channels == real.vae.latent_channels == 4
