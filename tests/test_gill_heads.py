"""GILL's heads on the tiny config: the decision head trains alone (config.train_decision) to beat
the majority class on held-out stories, and the tiny CLIP tower's pooled output depends on the image."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gill_support import random_gill, tiny_config
from wegen_jax.parallel import make_mesh
from wegen_jax.systems.gill.data import GENERATE, RETRIEVE
from wegen_jax.systems.gill.loss import forward_img_states
from wegen_jax.systems.gill.model import vision_tower
from wegen_jax.training.task import get_task
from wegen_jax.training.trainer import make_train_step


def _train(task, config, model, steps, batch):
  mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  graphdef, params, frozen = nnx.split(model, task.trainable(), ...)
  step = make_train_step(task, config, mesh, graphdef, params)
  opt = step.tx.init(params)
  batches = iter(task.dataset("train", seed=0, global_batch=batch))
  for i in range(steps):
    params, opt, metrics = step.step_fn(
      params, frozen, opt, jax.tree.map(jnp.asarray, next(batches)), jax.random.key(i), jnp.int32(i)
    )
  return nnx.merge(graphdef, params, frozen), params


def _held_out(task, n, batch):
  it = iter(task.dataset("validation", seed=0, global_batch=batch))
  return [jax.tree.map(jnp.asarray, next(it)) for _ in range(n // batch)]


def test_decision_head_trains_alone_above_majority():
  config = tiny_config(steps=3, max_images=2, max_len=200, static_fraction=0.5, num_records=512, num_validation=64)
  config.data.story_text = "dynamics"  # "nothing changes." is what tells a repeated image
  config.train_decision = True
  config.optimizer.update(lr=3e-2, warmup_steps=0, total_steps=1000, weight_decay=0.0)
  task = get_task(config)
  task.check_config()
  model = random_gill(task.model_config)
  before = nnx.state(model, nnx.Param)
  model, params = _train(task, config, model, steps=100, batch=16)
  assert list(params) == ["decision"]  # only the head trains
  after = nnx.state(model, nnx.Param)
  np.testing.assert_array_equal(after["visual_fc"]["kernel"][...], before["visual_fc"]["kernel"][...])

  @jax.jit
  def predict(batch):  # no rng: dropout off, as at inference
    _, h, _ = forward_img_states(model, batch, model.image_pooled(batch["context_pixels"]))
    return jnp.argmax(model.decide(h), axis=-1)

  held_out = _held_out(task, 64, 16)
  labels = np.concatenate([np.asarray(b["decision_label"]) for b in held_out])
  predicted = np.concatenate([np.asarray(predict(b)) for b in held_out])
  majority = max(np.mean(labels == RETRIEVE), np.mean(labels == GENERATE))
  accuracy = float(np.mean(predicted == labels))
  assert 0.3 < np.mean(labels == RETRIEVE) < 0.7  # both classes held out
  print(f"decision accuracy on 64 held-out stories {accuracy:.3f}, majority class {majority:.3f}")
  assert accuracy >= majority + 0.15, (accuracy, majority)


def _across_share(pooled):
  """Share of the pooled features' second moment that varies across images."""
  x = np.asarray(pooled, np.float64)
  return x.var(axis=0).sum() / (x**2).sum(axis=1).mean()


def test_tiny_clip_pooled_output_depends_on_the_image():
  """The tiny config's tower (vision_init='fan_in') against its own std-0.02 init, under which the
  pooled CLS is the same vector for every image (docs/GILL.md: the cause and the figures)."""
  config = tiny_config(num_validation=16)
  task = get_task(config)
  targets = _held_out(task, 16, 16)[0]["target_pixels"]
  share = _across_share(vision_tower(task.model_config, nnx.Rngs(0))(targets)[1])
  module_init = vision_tower(dataclasses.replace(task.model_config, vision_init="module"), nnx.Rngs(0))
  collapsed = _across_share(module_init(targets)[1])
  print(f"across-image share of the pooled features: module init {collapsed:.2e}, fan_in {share:.3f}")
  assert collapsed < 1e-3 and share > 0.03, (collapsed, share)
