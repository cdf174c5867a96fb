"""GILL / MGCC training: the trainer's step on the tiny config learns a fixed batch (mapper L2 and
retrieval InfoNCE fall) while only the [IMG] rows of the LLM's embedding move and stay at the
frozen rows' mean norm; the MGCC loss on 8 virtual devices equals the one-device value on
meshes of different shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from gill_support import random_gill, tiny_config
from sharding_harness import MESHES, mesh_id
from wegen_jax.parallel import activation_sharding, logical_to_spec, make_mesh, shard_module
from wegen_jax.training.task import get_task
from wegen_jax.training.trainer import make_train_step


def _first_batch(task, config, batch):
  return jax.tree.map(jnp.asarray, next(iter(task.dataset("train", seed=0, global_batch=batch))))


def test_train_step_learns_and_keeps_frozen_rows():
  config = tiny_config(num_records=4)
  config.optimizer.update(lr=3e-3, warmup_steps=0, total_steps=1000)
  task = get_task(config)
  model = random_gill(task.model_config)
  table0 = np.asarray(model.llm.embed.embedding[...])
  mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  graphdef, params, frozen = nnx.split(model, task.trainable(), ...)
  assert "unet" not in params and "vision" not in params and "layers" not in params["llm"]
  step = make_train_step(task, config, mesh, graphdef, params)
  opt = step.tx.init(params)
  batch = _first_batch(task, config, 4)
  history = []
  for i in range(15):
    params, opt, metrics = step.step_fn(params, frozen, opt, batch, jax.random.key(i), jnp.int32(i))
    history.append({k: float(v) for k, v in metrics.items()})
  first, last = history[0], history[-1]
  assert last["loss_gen"] < 0.7 * first["loss_gen"], (first, last)
  assert last["loss_ret"] < 0.5 * first["loss_ret"], (first, last)
  assert last["loss"] < first["loss"]
  table = np.asarray(params["llm"]["embed"]["embedding"][...])
  np.testing.assert_array_equal(table[:-8], table0[:-8])  # frozen rows: no update, no decay
  assert np.abs(table[-8:] - table0[-8:]).max() > 1e-3
  frozen_norm = np.linalg.norm(table0[:-8], axis=-1).mean()
  np.testing.assert_allclose(np.linalg.norm(table[-8:], axis=-1), frozen_norm, rtol=1e-5)


def _loss(task, model, batch):
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda s, b: task.loss_fn(nnx.merge(graphdef, s), b, jax.random.key(0)))
  return fn(state, batch)


@pytest.fixture(scope="module")
def reference():
  config = tiny_config(mgcc=True)  # MGCC: GILL + the refinement module
  task = get_task(config)
  batch = jax.device_get(_first_batch(task, config, 8))
  loss, metrics = _loss(task, random_gill(task.model_config), jax.tree.map(jnp.asarray, batch))
  return task, batch, float(loss), {k: float(v) for k, v in metrics.items()}


@pytest.mark.parametrize("shape", MESHES, ids=mesh_id)
def test_sharded_loss_matches_single_device(shape, reference):
  assert jax.device_count() >= 8, "tests/conftest.py should force 8 host devices"
  task, batch, ref_loss, ref_metrics = reference
  mesh = make_mesh(dict(zip(("data", "fsdp", "tensor"), shape)))
  model = shard_module(random_gill(task.model_config), mesh)
  put = lambda k, v: jax.device_put(v, NamedSharding(mesh, logical_to_spec(task.batch_axes(k), None, mesh, None)))
  sharded = {k: put(k, v) for k, v in batch.items()}
  with activation_sharding(mesh):
    loss, metrics = _loss(task, model, sharded)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=2e-5)
  for k, v in ref_metrics.items():
    np.testing.assert_allclose(float(metrics[k]), v, rtol=2e-5, atol=1e-6, err_msg=k)
  assert not sharded["input_ids"].sharding.is_fully_replicated
  if shape[1] * shape[2] > 1:
    assert not model.gen_text_fc.encoder[0].mlp.fc1.kernel.get_value().sharding.is_fully_replicated


def test_caption_file_rows(tmp_path):
  """A JSONL of captioned images -> rows `<s> caption [IMG0..7]` with CE on the caption and [IMG0] only,
  and captioning rows `<4 visual slots> caption` with CE on the caption."""
  from PIL import Image

  from wegen_jax.training.losses import IGNORE_INDEX

  lines = []
  for i, colour in enumerate(((255, 0, 0), (0, 0, 255))):
    Image.new("RGB", (40, 40), colour).save(tmp_path / f"{i}.png")
    lines.append(f'{{"image": "{i}.png", "caption": "caption {i}"}}')
  (tmp_path / "c.jsonl").write_text("\n".join(lines))
  config = tiny_config(source="captions", captions=str(tmp_path / "c.jsonl"))
  task = get_task(config)
  task.check_config()
  row = {k: np.asarray(v)[0] for k, v in next(iter(task.dataset("validation", seed=0, global_batch=2))).items()}
  tok = task.encoder().tok
  caption = tok.encode(f"caption {row['record_id']}")
  n, start = 1 + len(caption), int(row["img_start"])
  assert start == n and row["input_ids"][: start + 8].tolist() == [tok.bos_id] + caption + list(tok.img_ids)
  assert row["segment_ids"].sum() == n + 8 and not row["image_valid"].any()
  supervised = np.flatnonzero(row["labels"] != IGNORE_INDEX)
  assert supervised.tolist() == list(range(n))  # predicts caption[1:] ... and [IMG0] after the caption
  assert row["labels"][n - 1] == tok.img_ids[0]
  cap = np.flatnonzero(row["cap_labels"] != IGNORE_INDEX)
  assert cap.tolist() == list(range(3, 3 + len(caption)))  # from the last visual slot on
  assert row["sd_ids"].tolist()[: len(caption) + 1][-1] == 260  # the tiny SD tokenizer's end token
  assert abs(row["target_pixels"].mean()) > 0.1  # the image, CLIP-normalised
