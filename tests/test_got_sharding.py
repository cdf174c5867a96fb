"""The GoT loss and its gradients (LoRA, embeddings, SSGM, UNet) on 8 virtual CPU devices equal
the single-device values on meshes of different shapes (parameters FSDP/TP-sharded, batch
data-sharded)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from sharding_harness import MESHES, mesh_id, rel_err
from test_got import make_batch, random_model, tiny_config
from wegen_jax.parallel import activation_sharding, logical_to_spec, make_mesh, shard_module
from wegen_jax.systems.got import GoTConfig
from wegen_jax.systems.got.task import GoTTask

CHECKED = ("llm.layers.0.attn.q.lora_a", "llm.embed.embedding", "semantic.kernel", "unet.conv_in.kernel")


def _loss_and_grads(task, model, batch):
  graphdef, params, frozen = nnx.split(model, task.trainable(), ...)

  @jax.jit
  def fn(params, frozen, batch):
    loss_of = lambda p: task.loss_fn(nnx.merge(graphdef, p, frozen), batch, jax.random.key(0))
    (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    flat = {".".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(grads)}
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in flat.values()))
    return loss, metrics, norm, {k: flat[k] for k in CHECKED}

  return fn(params, frozen, batch)


@pytest.fixture(scope="module")
def reference():
  config = tiny_config()
  task = GoTTask(config)
  cfg = GoTConfig.from_dict(config.model)
  batch = make_batch(config, n=8)
  out = jax.device_get(_loss_and_grads(task, random_model(cfg), jax.tree.map(jnp.asarray, batch)))
  return config, task, cfg, batch, out


@pytest.mark.parametrize("shape", MESHES, ids=mesh_id)
def test_sharded_loss_and_grads_match_single_device(shape, reference):
  assert jax.device_count() >= 8, "tests/conftest.py should force 8 host devices"
  config, task, cfg, batch, (ref_loss, ref_metrics, ref_norm, ref_grads) = reference
  mesh = make_mesh(dict(zip(("data", "fsdp", "tensor"), shape)))
  model = shard_module(random_model(cfg), mesh)
  put = lambda k, v: jax.device_put(v, NamedSharding(mesh, logical_to_spec(task.batch_axes(k), None, mesh, None)))
  sharded = {k: put(k, v) for k, v in batch.items()}
  with activation_sharding(mesh):
    loss, metrics, norm, grads = _loss_and_grads(task, model, sharded)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=2e-5)
  for k, v in ref_metrics.items():
    np.testing.assert_allclose(float(metrics[k]), float(v), rtol=2e-5, atol=1e-6, err_msg=k)
  np.testing.assert_allclose(float(norm), float(ref_norm), rtol=1e-4)
  for k in CHECKED:
    assert rel_err(grads[k], ref_grads[k]) < 1e-4, k
  assert not sharded["input_ids"].sharding.is_fully_replicated
  if shape[1] * shape[2] > 1:  # parameters really are distributed
    assert not model.unet.conv_in.kernel.get_value().sharding.is_fully_replicated


def _tower_flops(model, batch, mesh=None):
  """XLA's per-device FLOPs of splicing the source images into the prompt (the vision tower)."""
  fn = jax.jit(lambda m, ids, seg, patches: m.prompt_inputs(ids, seg, patches)[0])
  args = [jnp.asarray(batch[k]) for k in ("input_ids", "segment_ids", "source_patches")]
  if mesh is None:
    return fn.lower(model, *args).compile().cost_analysis()["flops"]
  args = [jax.device_put(a, NamedSharding(mesh, logical_to_spec(("batch",), None, mesh, None))) for a in args]
  with activation_sharding(mesh):
    return fn.lower(shard_module(model, mesh), *args).compile().cost_analysis()["flops"]


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1)], ids=mesh_id)
def test_vision_tower_runs_on_each_devices_own_rows(shape, reference):
  """Each device encodes only its rows' source images: an unconstrained vmap over the tower let
  XLA replicate it (the GoT-3B step on v5p-64 ran all 128 images on every chip)."""
  config, task, _, batch, _ = reference
  cfg = GoTConfig.from_dict(dict(config.model, scan_layers=True))  # the scan's carry is what XLA replicated
  one = _tower_flops(random_model(cfg), batch)
  sharded = _tower_flops(random_model(cfg), batch, make_mesh(dict(zip(("data", "fsdp", "tensor"), shape))))
  assert sharded < one / 4, (sharded, one)
