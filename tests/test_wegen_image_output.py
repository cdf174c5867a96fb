"""The tiny default's design options for how the LLM writes an image and where the detokenizer
trains: `model.image_output` ("queries": generated images' `<img_i>` inputs stay learned query
embeddings, nothing of the target reaches the LLM) and `model.train_timesteps` (the diffusion
loss draws its timesteps from a range)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wegen_batches import make_batch, random_model, tiny_config
from wegen_jax.diffusion.losses import diffusion_loss
from wegen_jax.diffusion.schedulers import scheduler_from_config
from wegen_jax.systems.wegen import WeGenConfig
from wegen_jax.systems.wegen.config import SDXL_SCHEDULER
from wegen_jax.systems.wegen.loss import mllm_loss


def _ce_with_other_target(image_output):
  """loss_ce of one batch, and of the same batch with the target images' pixels replaced."""
  config = tiny_config(stage=2)
  config.model.update(image_output=image_output, image_index_embeddings=image_output == "queries")
  model = random_model(WeGenConfig.from_dict(config.model))
  batch = make_batch(config)
  other = dict(batch, pixel_values=batch["pixel_values"].copy())
  other["pixel_values"][:, 1] = np.random.default_rng(1).standard_normal(other["pixel_values"][:, 1].shape)
  ce = [
    float(mllm_loss(model, {k: jnp.asarray(v) for k, v in b.items()}, jax.random.key(0))[1]["loss_ce"])
    for b in (batch, other)
  ]
  return ce


def test_queries_keep_the_target_out_of_the_llm_inputs():
  # `</s>` after the target image is supervised: teacher forcing shows it the target's features
  ar = _ce_with_other_target("autoregressive")
  queries = _ce_with_other_target("queries")
  assert abs(ar[0] - ar[1]) > 1e-4, ar
  assert queries[0] == pytest.approx(queries[1], abs=1e-6), queries


def test_image_output_must_be_known():
  config = tiny_config(stage=2)
  config.model.image_output = "parallel"
  with pytest.raises(ValueError, match="image_output='parallel'"):
    WeGenConfig.from_dict(config.model)


def test_diffusion_loss_draws_timesteps_from_its_range():
  sched = scheduler_from_config(dict(SDXL_SCHEDULER, _class_name="DDPMScheduler"))
  unet = lambda x, t, cond, added: x  # noqa: E731  (only the drawn timesteps matter here)
  latents = jnp.zeros((256, 1, 2, 2))
  _, aux = diffusion_loss(unet, sched, latents, None, jax.random.key(0), t_range=(900, 1000), return_aux=True)
  t = np.asarray(aux["t"])
  assert t.min() >= 900 and t.max() < 1000 and len(set(t.tolist())) > 20
  _, aux = diffusion_loss(unet, sched, latents, None, jax.random.key(0), return_aux=True)
  assert np.asarray(aux["t"]).min() < 900


def test_image_index_embeddings_add_the_features_to_the_image_token_embeddings():
  config = tiny_config(stage=2)
  config.model.update(image_output="queries", image_index_embeddings=True)
  model = random_model(WeGenConfig.from_dict(config.model))
  batch = {k: jnp.asarray(v) for k, v in make_batch(config).items()}
  features = model.image_features(batch["pixel_values"])
  embeds = model.embed_inputs(batch["input_ids"], features, batch["image_token_positions"], batch["image_valid"])
  pos = np.asarray(batch["image_token_positions"][0, 0])
  tokens = model.llm.embed_tokens(batch["input_ids"])
  want = tokens[0, pos] + model.project_in(features[0, 0])
  np.testing.assert_allclose(np.asarray(embeds[0, pos]), np.asarray(want), atol=1e-6)
  text = np.setdiff1d(np.arange(batch["input_ids"].shape[1]), np.asarray(batch["image_token_positions"]).ravel())
  np.testing.assert_array_equal(np.asarray(embeds[0, text]), np.asarray(tokens[0, text]))
  config.model.image_output = "autoregressive"
  with pytest.raises(ValueError, match="image_index_embeddings needs image_output='queries'"):
    WeGenConfig.from_dict(config.model)
