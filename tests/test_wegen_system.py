"""WeGen end to end on a tiny model: the stage losses learn, gradients go where the recipe says,
and generate() returns text and images (also multi-turn with an earlier image as input, and
with VAR CFG)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest
from flax import nnx

from wegen_batches import make_batch, random_model, tiny_config
from wegen_jax.systems.wegen.tokenizer import load_tokenizer
from wegen_jax.generation import SamplingConfig, left_pad
from wegen_jax.systems.wegen import WeGenConfig
from wegen_jax.systems.wegen.generate import ImageSampling, ImageTokens, generate, images_to_pixels
from wegen_jax.layers.paths import path_string
from wegen_jax.systems.wegen.task import WeGenTask
from wegen_jax.training.optim import make_optimizer, make_schedule
from wegen_jax.training.trainer import build_train_step

TERMS = ("loss_ce", "loss_mse", "loss_cos", "loss_diffusion")


@pytest.fixture(scope="module")
def setup():
  config = tiny_config(stage=2)
  # the authors' layout and loss (teacher-forced, fed-back tokens, VAR CFG, the diffusion term);
  # the tiny default's learned queries are tests/test_wegen_image_output.py's
  config.model.update(image_output="autoregressive", image_index_embeddings=False, image_residual=False)
  config.model.loss_weights = dict(ce=1.0, mse=1.0, cos=1.0, diffusion=1.0)
  return config, WeGenConfig.from_dict(config.model)


class _OverfitTask(WeGenTask):
  """Stage-2 loss with the UNet trainable too: with a frozen random UNet the diffusion term can
  only move through the 64 conditioning features, which cannot fit a fixed noise draw 10x."""

  def trainable(self):
    return nnx.All(nnx.Param, nnx.Any(*(nnx.PathContains(n) for n in ("llm", "input_proj", "output_proj", "unet"))))


@pytest.fixture(scope="module")
def trained(setup):
  """60 Adam steps on one fixed batch (and one fixed noise draw); returns (model, history)."""
  config, cfg = setup
  task = _OverfitTask(config)
  model = random_model(cfg)
  graphdef, params, frozen = nnx.split(model, task.trainable(), ...)
  opt = ml_collections.ConfigDict(dict(config.optimizer, lr=3e-3, warmup_steps=0, total_steps=10_000, weight_decay=0.0))
  tx = make_optimizer(opt)
  step_fn = jax.jit(build_train_step(task, graphdef, tx, 1, make_schedule(opt)))
  opt_state = tx.init(params)
  batch = jax.tree.map(jnp.asarray, make_batch(config))
  rng = jax.random.key(3)
  history = []
  for step in range(60):
    params, opt_state, metrics = step_fn(params, frozen, opt_state, batch, rng, step)
    history.append({k: float(metrics[k]) for k in TERMS + ("loss",)})
  return nnx.merge(graphdef, params, frozen), history


def test_stage2_overfits_a_fixed_batch_every_term_falls_10x(trained):
  _, history = trained
  first, last = history[0], history[-1]
  print({k: (round(first[k], 4), round(last[k], 4)) for k in first})
  for k in TERMS:
    assert last[k] <= first[k] / 10, (k, first[k], last[k])


def test_stage2_trains_llm_and_projectors_and_diffusion_gradient_reaches_the_llm(setup):
  config, cfg = setup
  task = WeGenTask(config)
  model = random_model(cfg, seed=1)
  graphdef, params, frozen = nnx.split(model, task.trainable(), ...)
  trained_parts = {str(p[0]) for p, _ in nnx.to_flat_state(params)}
  frozen_parts = {str(p[0]) for p, _ in nnx.to_flat_state(frozen)}
  assert trained_parts == {"llm", "input_proj", "output_proj"}
  assert frozen_parts == {"vision", "unet"}  # the tiny default's folded-pixel autoencoder has no weights
  batch = jax.tree.map(jnp.asarray, make_batch(config))

  def diffusion_only(params):
    return task.loss_fn(nnx.merge(graphdef, params, frozen), batch, jax.random.key(0))[1]["loss_diffusion"]

  grads = jax.jit(jax.grad(diffusion_only))(params)
  g = grads["llm"]["layers"][0]["mlp"]["up"]["kernel"].get_value()
  assert float(jnp.abs(g).max()) > 0  # through the frozen UNet and the output projector
  assert float(jnp.abs(grads["input_proj"]["proj"]["kernel"].get_value()).max()) > 0


def _prompts(config, tok):
  """The training rows cut after the response text 'ok ' (where the target image follows)."""
  batch = make_batch(config)
  rows = []
  for b in range(batch["input_ids"].shape[0]):
    ids = batch["input_ids"][b]
    cut = int(batch["image_token_positions"][b, 1, 0]) - 1  # the target <img>
    rows.append(ids[:cut])
  ids, mask = left_pad(rows, 0)
  return ids, mask, batch["pixel_values"][:, :1]


def test_generate_text_and_images_multi_turn_and_var_cfg(setup, trained):
  config, cfg = setup
  model, _ = trained
  tok = load_tokenizer("")
  tokens = ImageTokens.from_tokenizer(tok, cfg.num_image_tokens)
  ids, mask, pixels = _prompts(config, tok)
  sampling = SamplingConfig(max_new_tokens=70, stop_tokens=(tok.eos_id,), pad_token=tok.pad_id)
  steps = ImageSampling(num_steps=3, guidance_scale=2.0)
  out = generate(
    model,
    ids,
    tokens=tokens,
    attention_mask=mask,
    pixel_values=pixels,
    sampling=sampling,
    image_sampling=steps,
    rng=jax.random.key(0),
  )
  for b in range(ids.shape[0]):  # the trained continuation: <img> 64 forced tokens </img> </s>
    assert out.tokens[b, 0] == tokens.boi and out.tokens[b, 65] == tokens.eoi
    assert list(out.tokens[b, 1:65]) == list(tokens.image)
    assert out.text_tokens[b] == [tok.eos_id]
    assert out.images[b].shape == (1, 16, 16, 3) and out.images[b].dtype == np.uint8
    assert out.features[b].shape == (1, 64, cfg.vision.width)
  assert np.ptp(out.images[0]) > 0

  # Turn 2 refines turn 1's image: it enters the prompt as an input image.
  turn2 = [
    np.concatenate([ids[b][mask[b] > 0], out.tokens[b, :66], tok.encode(" [INST] again [/INST] ok ")])
    for b in range(ids.shape[0])
  ]
  ids2, mask2 = left_pad(turn2, 0)
  pixels2 = np.stack(
    [np.concatenate([pixels[b], images_to_pixels(out.images[b], cfg.vision.image_size)]) for b in range(ids.shape[0])]
  )
  out2 = generate(
    model,
    ids2,
    tokens=tokens,
    attention_mask=mask2,
    pixel_values=pixels2,
    sampling=sampling,
    image_sampling=steps,
    rng=jax.random.key(1),
  )
  assert out2.tokens.shape == (2, 70)
  assert all(im.dtype == np.uint8 and im.shape[1:] == (16, 16, 3) for im in out2.images)

  # VAR CFG changes the fed-back embeddings, hence the later image features; s = 1 is off.
  out3 = generate(
    model,
    ids,
    tokens=tokens,
    attention_mask=mask,
    pixel_values=pixels,
    sampling=sampling,
    var_cfg_scale=3.0,
    image_sampling=steps,
    rng=jax.random.key(0),
  )
  assert list(out3.tokens[0, :66]) == list(out.tokens[0, :66])
  np.testing.assert_allclose(out3.features[0][0, 0], out.features[0][0, 0], rtol=1e-4, atol=1e-5)  # <img> state
  assert np.abs(out3.features[0][0, 1:] - out.features[0][0, 1:]).max() > 1e-3


def test_stage1_trains_the_unet_with_a_delayed_start_and_configs_hold_the_real_sizes():
  """Stage 1: UNet k/v from step 1, the rest of the UNet after freeze_until; the tiny default's
  tower (no pretrained weights) trains with it from the start, the 7B's EVA never does."""
  from wegen_jax.configs.wegen import get_config

  config = tiny_config(stage=1)
  config.model.detokenizer_trains_vision = False  # as for a pretrained tower (7B)
  assert WeGenTask(config).trainable_parts() == ("unet",)
  config.model.detokenizer_trains_vision = True
  task = WeGenTask(config)
  model = random_model(WeGenConfig.from_dict(config.model))
  _, params, _ = nnx.split(model, task.trainable(), ...)
  assert {str(p[0]) for p, _ in nnx.to_flat_state(params)} == {"unet", "vision"}
  labels = jax.tree_util.tree_map_with_path(lambda p, _: task.param_group(path_string(p)), params)
  tx = make_optimizer(config.optimizer, labels)  # freeze_until={'unet': 10}
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, state = tx.update(grads, state, params)  # step 0: warm-up lr 0
  updates, _ = tx.update(grads, state, params)  # step 1: lr > 0, still < 10
  moved = {path_string(p): float(jnp.abs(u).max()) > 0 for p, u in jax.tree_util.tree_flatten_with_path(updates)[0]}
  kv = {p for p in moved if ".attn1.k." in p or ".attn1.v." in p or ".attn2.k." in p or ".attn2.v." in p}
  vision = {p for p in moved if p.startswith("vision.")}
  assert kv and vision and {p for p, m in moved.items() if m} == kv | vision  # the rest of the UNet waits
  assert WeGenTask(get_config("size=7b,stage=1")).trainable_parts() == ("unet",)
  graphdef, params, frozen = nnx.split(model, task.trainable(), ...)
  batch = jax.tree.map(jnp.asarray, make_batch(config))
  grads = jax.jit(jax.grad(lambda p: task.loss_fn(nnx.merge(graphdef, p, frozen), batch, jax.random.key(0))[0]))(params)
  assert float(jnp.abs(grads["vision"]["patch_embed"]["kernel"].get_value()).max()) > 0  # the tower learns
  stage2 = tiny_config(stage=2)
  stage2.model.detokenizer_trains_vision = False
  assert WeGenTask(stage2).init_components() == ("unet", "vae")
  stage2.model.detokenizer_trains_vision = True
  assert WeGenTask(stage2).init_components() == ("unet", "vae", "vision")  # stage 1's tower, frozen
  assert WeGenTask(stage2).trainable_parts() == ("llm", "input_proj", "output_proj")

  real = WeGenConfig.from_dict(get_config("size=7b,stage=2").model)
  assert (real.llm.vocab_size, real.llm.hidden_size, real.llm.num_layers) == (32330, 4096, 32)
  assert (real.vision.width, real.vision.depth, real.vision.num_heads, real.vision.mlp_dim) == (1792, 64, 16, 15360)
  assert real.vision.grid == (32, 32) and real.pool == 4
  assert real.unet.cross_attention_dim == (1792,) * 3 and real.unet.projection_class_embeddings_input_dim == 3328
  assert real.vae.block_out_channels == (128, 256, 512, 512) and real.llm.dtype == "bfloat16"
  s1, s2 = get_config("size=7b,stage=1"), get_config("size=7b,stage=2")
  assert (s1.optimizer.lr, s1.optimizer.total_steps, dict(s1.optimizer.freeze_until)) == (
    1e-4,
    160_000,
    {"unet": 12_000},
  )
  assert (s2.optimizer.lr, s2.optimizer.b2, s2.optimizer.grad_clip, s2.grad_accum) == (5e-4, 0.95, 1.0, 2)


def test_diffusion_loss_runs_only_on_the_picked_slots():
  """diffusion_images_per_example=k: the UNet/VAE run on the first k masked slots of each row
  (fewer FLOPs than on every slot); slots that do not fit are counted, not silently lost."""
  from wegen_jax.systems.wegen.loss import select_slots, wegen_loss

  mask = jnp.asarray([[False, True, False, True], [True, False, False, False], [False] * 4])
  idx, picked = select_slots(mask, 2)
  np.testing.assert_array_equal(np.asarray(picked), [[True, True], [True, False], [False, False]])
  np.testing.assert_array_equal(np.asarray(idx)[np.asarray(picked)], [1, 3, 0])
  assert select_slots(mask, 0)[1] is mask

  def compiled(k, stage):
    config = tiny_config(stage=stage)
    config.model.diffusion_images_per_example = k
    model = random_model(WeGenConfig.from_dict(config.model))
    batch = jax.tree.map(jnp.asarray, make_batch(config))  # 2 rows: 2 valid images, 1 target each
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, b: wegen_loss(nnx.merge(graphdef, s), b, jax.random.key(0), stage))
    return fn.lower(state, batch).compile(), fn(state, batch)[1]

  exe_all, _ = compiled(0, 1)
  exe_one, metrics = compiled(1, 1)
  assert exe_one.cost_analysis()["flops"] < 0.75 * exe_all.cost_analysis()["flops"]
  assert float(metrics["diffusion_images_skipped"]) == 2  # stage 1: the second image of each row
  _, metrics = compiled(1, 2)
  assert float(metrics["diffusion_images_skipped"]) == 0  # stage 2: the one target fits


def test_stage2_step_with_unet_remat_equals_without():
  """7B configs rematerialise the UNet (unet_remat=True); in stage 2 it is frozen under the
  LLM's gradient, which nnx.remat could not trace. Same loss and gradients as without remat."""
  results = []
  for remat in (False, True):
    config = tiny_config(stage=2)
    config.model.unet_remat = remat
    task = WeGenTask(config)
    model = random_model(WeGenConfig.from_dict(config.model))
    graphdef, params, frozen = nnx.split(model, task.trainable(), ...)
    batch = jax.tree.map(jnp.asarray, make_batch(config))
    loss = lambda p: task.loss_fn(nnx.merge(graphdef, p, frozen), batch, jax.random.key(0))[0]
    results.append(jax.jit(jax.value_and_grad(loss))(params))
  (l0, g0), (l1, g1) = results
  np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


def test_vae_encode_slices_give_the_same_latents():
  """vae_encode_slices=n encodes n passes of M/n images (memory of one pass) and draws the noise
  once: the latents equal the one-pass latents; a count that does not divide M says so."""
  config = tiny_config(stage=1, sdxl_vae=True)
  model = random_model(WeGenConfig.from_dict(config.model))
  pixels = jax.random.uniform(jax.random.key(1), (6, 3, 16, 16), minval=-1.0, maxval=1.0)
  key = jax.random.key(2)
  want = jax.jit(model.latents)(pixels, key)
  for n in (2, 3):
    model.cfg = dataclasses.replace(model.cfg, vae_encode_slices=n)
    np.testing.assert_allclose(jax.jit(model.latents)(pixels, key), want, atol=1e-5)
  model.cfg = dataclasses.replace(model.cfg, vae_encode_slices=4)
  with pytest.raises(ValueError, match="6 images per step do not split into vae_encode_slices=4"):
    model.latents(pixels, key)
