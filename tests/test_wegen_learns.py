"""The tiny WeGen pipeline learns: a short stage 1 on a fixed set of synthetic frames makes the
detokenizer redraw each frame from its own visual features, clearly better than from another
frame's. A break anywhere on the path pixels -> vision tower -> pooled features -> UNet
conditioning -> sampler -> pixels (a transposed pool, a dropped or zeroed condition, a sampler
that disagrees with the training target) fails here. Figures (2-core
CPU, 300 steps, the config's tower training, t in [900, 1000) and 1 sampling step): loss 1.40 ->
0.017, own features MAE 4.0/255, another frame's 45.3 (8.3 while the sampler clipped x0 to
[-1, 1], the bug this bound now catches)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from wegen_batches import random_model, tiny_config
from wegen_jax.data import synthetic as S
from wegen_jax.data.image_preprocess import sd_preprocess
from wegen_jax.systems.wegen import WeGenConfig
from wegen_jax.systems.wegen.generate import ImageSampling, images_to_pixels, reconstruct
from wegen_jax.systems.wegen.task import WeGenTask
from wegen_jax.training.optim import make_optimizer, make_schedule
from wegen_jax.training.trainer import build_train_step

NUM_FRAMES, STEPS = 8, 300


def _frames():
  """Eight distinct scenes (background, objects, colours), first frame of each clip."""
  return [S.generate_clip(100 + i, S.ClipSpec(num_frames=8))[0][0] for i in range(NUM_FRAMES)]


def _mae(a, b) -> float:
  return float(np.mean(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def train_stage1(steps=STEPS, lr=2e-3, **model):
  """`steps` Adam steps of tiny stage 1 (tower and UNet) on the fixed frames."""
  config = tiny_config(stage=1)
  config.model.update(model)
  cfg = WeGenConfig.from_dict(config.model)
  task = WeGenTask(config)
  model = random_model(cfg)
  frames = _frames()
  size, vae_size = cfg.vision.image_size, config.data.vae_image_size
  batch = {
    "pixel_values": jnp.asarray(images_to_pixels(frames, size))[:, None],
    "vae_pixels": jnp.asarray(np.stack([sd_preprocess(f, vae_size) for f in frames]))[:, None],
    "image_valid": jnp.ones((NUM_FRAMES, 1), bool),
  }
  graphdef, params, frozen = nnx.split(model, task.trainable(), ...)
  opt = ml_collections.ConfigDict(dict(config.optimizer, lr=lr, warmup_steps=5, total_steps=steps, freeze_until={}))
  tx = make_optimizer(opt)
  step_fn = jax.jit(build_train_step(task, graphdef, tx, 1, make_schedule(opt)))
  opt_state = tx.init(params)
  losses = []
  for step in range(steps):  # a fresh noise draw each step, as in training
    params, opt_state, metrics = step_fn(params, frozen, opt_state, batch, jax.random.key(step), step)
    losses.append(float(metrics["loss_diffusion"]))
  targets = [((np.asarray(v).transpose(1, 2, 0) + 1) * 127.5).round().clip(0, 255) for v in batch["vae_pixels"][:, 0]]
  return nnx.merge(graphdef, params, frozen), batch, targets, losses


def reconstruction_maes(model, batch, targets):
  """Mean MAE (of 255) of each frame redrawn from its own features, and from its neighbour's."""
  vae_size = targets[0].shape[0]
  sampling = ImageSampling(num_steps=tiny_config(stage=1).sampling.num_steps, guidance_scale=1.0)
  pixels = batch["pixel_values"][:, 0]
  own = reconstruct(model, pixels, jax.random.key(7), sampling, vae_size, vae_size)
  other = reconstruct(model, jnp.roll(pixels, 1, axis=0), jax.random.key(7), sampling, vae_size, vae_size)
  return np.mean([_mae(o, t) for o, t in zip(own, targets)]), np.mean([_mae(o, t) for o, t in zip(other, targets)])


@pytest.fixture(scope="module")
def stage1():
  return train_stage1()


def test_stage1_redraws_each_frame_from_its_own_features(stage1):
  model, batch, targets, losses = stage1
  own_mae, other_mae = reconstruction_maes(model, batch, targets)
  print(
    f"loss {losses[0]:.3f} -> {np.mean(losses[-10:]):.3f}; own features MAE {own_mae:.1f}, another's {other_mae:.1f}"
  )
  assert np.mean(losses[-10:]) < 0.4 * losses[0]
  assert own_mae < 6.0, own_mae  # of 255; before training noise (~60)
  assert own_mae < 0.5 * other_mae, (own_mae, other_mae)  # the condition decides the picture
