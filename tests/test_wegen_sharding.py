"""The WeGen stage-2 loss (all four terms) on 8 virtual CPU devices equals the single-device
value on meshes of different shapes (parameters FSDP/TP-sharded, batch data-sharded)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from wegen_batches import make_batch, random_model, tiny_config
from wegen_jax.parallel import activation_sharding, logical_to_spec, make_mesh, shard_module
from wegen_jax.systems.wegen import WeGenConfig
from wegen_jax.systems.wegen.task import WeGenTask
from sharding_harness import MESHES, mesh_id


def _loss(task, model, batch):
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda s, b: task.loss_fn(nnx.merge(graphdef, s), b, jax.random.key(0)))
  return fn(state, batch)


@pytest.fixture(scope="module")
def reference():
  config = tiny_config(stage=2)
  config.model.loss_weights = dict(ce=1.0, mse=1.0, cos=1.0, diffusion=1.0)  # the 7B's four terms (tiny: three)
  task = WeGenTask(config)
  cfg = WeGenConfig.from_dict(config.model)
  batch = make_batch(config, batch=8)
  loss, metrics = _loss(task, random_model(cfg), jax.tree.map(jnp.asarray, batch))
  return config, task, cfg, batch, float(loss), {k: float(v) for k, v in metrics.items()}


@pytest.mark.parametrize("shape", MESHES, ids=mesh_id)
def test_sharded_loss_matches_single_device(shape, reference):
  assert jax.device_count() >= 8, "tests/conftest.py should force 8 host devices"
  config, task, cfg, batch, ref_loss, ref_metrics = reference
  mesh = make_mesh(dict(zip(("data", "fsdp", "tensor"), shape)))
  model = shard_module(random_model(cfg), mesh)
  put = lambda k, v: jax.device_put(v, NamedSharding(mesh, logical_to_spec(task.batch_axes(k), None, mesh, None)))
  sharded = {k: put(k, v) for k, v in batch.items()}
  with activation_sharding(mesh):
    loss, metrics = _loss(task, model, sharded)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=2e-5)
  for k, v in ref_metrics.items():
    np.testing.assert_allclose(float(metrics[k]), v, rtol=2e-5, atol=1e-6, err_msg=k)
  assert not sharded["input_ids"].sharding.is_fully_replicated
  if shape[1] * shape[2] > 1:  # parameters really are distributed
    assert not model.llm.layers[0].mlp.up.kernel.get_value().sharding.is_fully_replicated
