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
  queries = image_output == "queries"
  config.model.update(image_output=image_output, image_index_embeddings=queries, image_residual=queries)
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


def _residual_model(config):
  """A random tiny model with image_residual and its output projector zeroed (the LLM writes no edit)."""
  config.model.update(image_output="queries", image_index_embeddings=True, image_residual=True)
  model = random_model(WeGenConfig.from_dict(config.model))
  model.output_proj.proj.kernel[...] = jnp.zeros_like(model.output_proj.proj.kernel[...])
  return model


def test_image_residual_adds_the_previous_image_of_the_same_packed_sequence():
  config = tiny_config(stage=2)
  model = _residual_model(config)
  features = jnp.arange(1.0, 5.0).reshape(1, 4, 1, 1)  # slots 1..4
  valid = jnp.array([[True, True, False, True]])
  base = model.edit_base(features, valid, segments=jnp.array([[1, 1, 2, 2]]))
  # slot 1 follows slot 0 in sequence 1; slot 2 starts sequence 2; slot 3 follows an empty slot
  np.testing.assert_array_equal(np.asarray(base).ravel(), [0.0, 1.0, 0.0, 0.0])
  np.testing.assert_array_equal(np.asarray(model.edit_base(features, valid)).ravel(), [0.0, 1.0, 2.0, 0.0])
  config.model.update(image_output="autoregressive", image_index_embeddings=False)
  with pytest.raises(ValueError, match="image_residual needs image_output='queries'"):
    WeGenConfig.from_dict(config.model)


def test_image_residual_starts_by_copying_the_edited_image():
  config = tiny_config(stage=2)
  model = _residual_model(config)
  batch = make_batch(config)
  same = dict(batch, pixel_values=batch["pixel_values"].copy())
  same["pixel_values"][:, 1] = same["pixel_values"][:, 0]  # the target = the input image
  metrics = [mllm_loss(model, {k: jnp.asarray(v) for k, v in b.items()}, jax.random.key(0))[1] for b in (batch, same)]
  assert float(metrics[0]["loss_mse"]) > 0.01  # a different target is not reached by copying
  assert float(metrics[1]["loss_mse"]) == pytest.approx(0.0, abs=1e-10)
  assert float(metrics[1]["loss_cos"]) == pytest.approx(0.0, abs=1e-5)


def test_generation_adds_the_prompts_last_image_to_each_drawn_image(monkeypatch):
  from wegen_jax.systems.base import Request
  import wegen_jax.systems.wegen.generate as G
  from wegen_jax.systems.wegen.generate import images_to_pixels
  from wegen_jax.systems.wegen.system import WeGenSystem

  config = tiny_config(stage=2)
  model = _residual_model(config)
  drawn = []
  real_draw = G._draw_images
  monkeypatch.setattr(G, "_draw_images", lambda model, f, *a: drawn.append(np.asarray(f)) or real_draw(model, f, *a))
  rng = np.random.default_rng(0)
  first, last = (rng.integers(0, 256, (24, 24, 3), np.uint8) for _ in range(2))
  system = WeGenSystem(config, model)
  requests = [
    Request(text="move the red circle left", images=[first, last], options={"force_image": True}),
    Request(text="a red circle", options={"force_image": True}),
  ]
  system.generate(requests)
  drawn = np.concatenate(drawn)  # the two prompts are drawn together or one by one
  own = model.image_features(jnp.asarray(images_to_pixels([last], config.model.vision["image_size"])))
  np.testing.assert_allclose(drawn[0], np.asarray(own[0]), atol=1e-5)  # edits the last image
  np.testing.assert_array_equal(drawn[1], 0.0)  # text alone: nothing to edit


def test_latent_samplers_keep_the_unets_x0_unclipped():
  """DDPM/DDIM clip x0 to [-1, 1] by default (pixel-space models); SDXL's latents are unit-variance
  (|x| > 1 everywhere colours are saturated), so the samplers made from SDXL_SCHEDULER must not."""
  from wegen_jax.systems.got.config import GOT_SCHEDULER

  tiny = WeGenConfig.from_dict(tiny_config(stage=1).model)
  samplers = {"wegen tiny": tiny.sampler(), "got": scheduler_from_config(GOT_SCHEDULER)}
  for name, sampler in samplers.items():
    plan = sampler.plan(1)
    x = jnp.full((1, 4, 2, 2), 0.5)
    x0 = jnp.full_like(x, 3.0)  # what the UNet should draw
    a = plan.alpha_t[0]
    eps = (x - a**0.5 * x0) / (1 - a) ** 0.5
    out = {"epsilon": eps, "v_prediction": a**0.5 * eps - (1 - a) ** 0.5 * x0}[sampler.prediction_type]
    drawn = sampler.step(plan, out, 0, x, noise=jnp.zeros_like(x))
    np.testing.assert_allclose(np.asarray(drawn), 3.0, rtol=1e-4, err_msg=name)


def test_cosine_distance_is_torchs_and_an_all_zero_slot_has_a_finite_gradient():
  """F.normalize semantics (norm floored at 1e-12), as the authors' get_cosine_loss; a slot whose
  prediction is all zeros (masked out later) must not put NaN into the gradient."""
  import torch

  from wegen_jax.systems.wegen.loss import cosine_distance

  rng = np.random.default_rng(0)
  pred, target = rng.standard_normal((2, 3, 5, 8)).astype(np.float32)
  pred[1] = 0.0
  t_pred, t_target = torch.from_numpy(pred), torch.from_numpy(target)
  want = 1 - (torch.nn.functional.normalize(t_pred, dim=-1) * torch.nn.functional.normalize(t_target, dim=-1)).sum(-1)
  np.testing.assert_allclose(np.asarray(cosine_distance(jnp.asarray(pred), jnp.asarray(target))), want, atol=1e-6)
  grad = jax.grad(lambda p: cosine_distance(p, jnp.asarray(target))[0].mean())(jnp.asarray(pred))
  assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad[0])).max() > 0


def _inplace_model(config, inplace=True):
  config.model.update(image_output="queries", image_index_embeddings=True, image_residual=True, image_inplace=inplace)
  return random_model(WeGenConfig.from_dict(config.model))


def _edit_features(model, tokens, tok, pixels):
  """One edit drawn by generate(), and the same sequence's teacher-forced prediction (mllm_loss's path)."""
  from wegen_jax.generation import SamplingConfig
  from wegen_jax.systems.wegen.generate import ImageSampling, generate, image_positions

  q = model.cfg.num_image_tokens
  image = [tokens.boi, *tokens.image, tokens.eoi]
  prompt = np.asarray([[tok.bos_id, *image, *tok.encode("move the red circle left")]], np.int32)
  out = generate(
    model,
    prompt,
    tokens=tokens,
    pixel_values=pixels,
    image_first=True,
    sampling=SamplingConfig(max_new_tokens=q + 2, pad_token=tok.pad_id),
    image_sampling=ImageSampling(num_steps=1),
  )
  full = jnp.asarray(np.concatenate([prompt, [image]], 1))
  pos = jnp.asarray(image_positions(np.asarray(full), tokens, 2))
  features = model.image_features(jnp.asarray(np.concatenate([pixels, pixels], 1)))
  valid, is_target = jnp.array([[True, True]]), jnp.array([[False, True]])
  embeds = model.embed_inputs(full, features, pos, valid & ~is_target)
  bases = model.edit_base(features, valid)
  embeds = model.embed_edit_bases(embeds, bases, pos, is_target)
  hidden = model.llm.forward(inputs_embeds=embeds).hidden_states
  forced = model.output_proj(hidden[0, pos[0, 1] - 1]) + bases[0, 1]
  return out.features[0][0], np.asarray(forced)


def test_image_inplace_generation_draws_what_teacher_forcing_trains():
  """The edit base's features enter at the positions that predict each output token, in
  training and in decoding alike; turning the option off changes the drawn features."""
  from wegen_jax.systems.wegen.generate import ImageTokens
  from wegen_jax.systems.wegen.tokenizer import load_tokenizer

  tok = load_tokenizer("")
  model = _inplace_model(tiny_config(stage=2))
  tokens = ImageTokens.from_tokenizer(tok, model.cfg.num_image_tokens)
  s = model.cfg.vision.image_size
  pixels = np.random.default_rng(0).standard_normal((1, 1, 3, s, s)).astype(np.float32)
  drawn, forced = _edit_features(model, tokens, tok, pixels)
  np.testing.assert_allclose(drawn, forced, atol=1e-4)
  plain = _inplace_model(tiny_config(stage=2), inplace=False)
  assert np.abs(_edit_features(plain, tokens, tok, pixels)[0] - drawn).max() > 1e-3
  config = tiny_config(stage=2)
  config.model.update(image_output="queries", image_residual=False, image_inplace=True)
  with pytest.raises(ValueError, match="image_inplace needs image_residual"):
    WeGenConfig.from_dict(config.model)


def test_changed_tokens_weigh_more_and_unchanged_images_keep_the_plain_mean():
  from wegen_jax.systems.wegen.loss import token_weights

  config = tiny_config(stage=2)
  config.model.update(
    image_output="queries", image_index_embeddings=True, image_residual=True, changed_token_weight=3.0
  )
  cfg = WeGenConfig.from_dict(config.model)
  base = jnp.zeros((2, 4, 8))
  target = base.at[0, 1].set(1.0)  # image 0 changes token 1; image 1 changes nothing
  w = np.asarray(token_weights(cfg, base, target))
  np.testing.assert_allclose(w[0], np.array([1, 4, 1, 1]) / 1.75, rtol=1e-6)
  np.testing.assert_allclose(w[1], 1.0)

  batch = make_batch(config)
  model = random_model(cfg)
  features = np.asarray(model.image_features(jnp.asarray(batch["pixel_values"])))
  # half of the target tokens count as changed: the weighted mse differs from the plain one
  threshold = float(np.median(np.mean(np.square(features[:, 1] - features[:, 0]), -1)))

  def mse(weight, b):
    m = random_model(
      WeGenConfig.from_dict(dict(config.model, changed_token_weight=weight, changed_token_threshold=threshold))
    )
    return float(mllm_loss(m, {k: jnp.asarray(v) for k, v in b.items()}, jax.random.key(0))[1]["loss_mse"])

  assert mse(3.0, batch) != pytest.approx(mse(0.0, batch), rel=1e-3)
  same = dict(batch, pixel_values=batch["pixel_values"].copy())
  same["pixel_values"][:, 1] = same["pixel_values"][:, 0]  # nothing changes: every weight is 1
  assert mse(3.0, same) == pytest.approx(mse(0.0, same), rel=1e-6)


def test_a_zero_diffusion_weight_skips_the_detokenizer(monkeypatch):
  import wegen_jax.systems.wegen.loss as L

  config = tiny_config(stage=2)
  config.model.loss_weights = dict(ce=1.0, mse=1.0, cos=1.0, diffusion=0.0)
  model = random_model(WeGenConfig.from_dict(config.model))
  batch = {k: jnp.asarray(v) for k, v in make_batch(config).items()}
  calls = []
  real = L.diffusion_on_slots
  monkeypatch.setattr(L, "diffusion_on_slots", lambda *a: calls.append(1) or real(*a))
  loss, metrics = L.mllm_loss(model, batch, jax.random.key(0))
  assert not calls and float(metrics["loss_diffusion"]) == 0.0
  total = sum(float(metrics[k]) for k in ("loss_ce", "loss_mse", "loss_cos"))
  assert float(loss) == pytest.approx(total, rel=1e-5)
