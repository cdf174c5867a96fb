"""Forward and gradients on 8 virtual CPU devices equal the single-device result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wegen_jax.models import LLM, LLMConfig
from wegen_jax.parallel import activation_sharding, make_mesh, shard_module
from wegen_jax.training import cross_entropy, next_token_labels
from sharding_harness import mesh_id, rel_err

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]  # fsdp x4 with tensor 1 too: the LLM's 7B layout


def build(remat="none"):
  cfg = LLMConfig(
    family="llama",
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=8,
    num_kv_heads=4,
    remat=remat,
  )
  return LLM(cfg, rngs=nnx.Rngs(0))


def loss_and_grads(model, ids, mesh=None):
  graphdef, state = nnx.split(model)

  @jax.jit
  def step(state, ids):
    def loss_fn(state):
      logits = nnx.merge(graphdef, state)(ids)
      return cross_entropy(logits, next_token_labels(ids))[0]

    return jax.value_and_grad(loss_fn)(state)

  if mesh is None:
    return step(state, ids)
  with activation_sharding(mesh):
    return step(state, ids)


@pytest.fixture(scope="module")
def reference():
  ids = jnp.asarray(np.random.RandomState(0).randint(0, 128, (8, 16)))
  return ids, loss_and_grads(build(), ids)


@pytest.mark.parametrize("shape", MESHES, ids=mesh_id)
def test_sharded_loss_and_grads_match_single_device(shape, reference):
  assert jax.device_count() >= 8, "tests/conftest.py should force 8 host devices"
  ids, (ref_loss, ref_grads) = reference
  mesh = make_mesh(dict(zip(("data", "fsdp", "tensor"), shape)))
  model = shard_module(build(remat="full"), mesh)
  batch = jax.device_put(ids, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"))))
  loss, grads = loss_and_grads(model, batch, mesh)
  assert rel_err(loss, ref_loss) <= 1e-5
  flat_ref = dict(nnx.to_flat_state(ref_grads))
  flat = dict(nnx.to_flat_state(grads))
  assert flat.keys() == flat_ref.keys()
  for path, g in flat.items():
    assert rel_err(g.get_value(), flat_ref[path].get_value()) <= 1e-5, path
  # parameters really are distributed: some kernel is split over more than one device
  kernel = model.layers[0].mlp.gate.kernel.get_value()
  if shape != (8, 1, 1):
    assert not kernel.sharding.is_fully_replicated


def test_create_sharded_builds_each_parameter_on_its_mesh_shards():
  from wegen_jax.parallel import create_sharded

  mesh = make_mesh({"fsdp": 4, "tensor": 2})
  model = create_sharded(lambda: build(), mesh)
  reference = build()
  kernel = model.layers[1].mlp.up.kernel.get_value()
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert kernel.addressable_shards[0].data.shape == (64 // 4, 128 // 2)
  np.testing.assert_allclose(
    np.asarray(kernel), np.asarray(reference.layers[1].mlp.up.kernel.get_value()), rtol=1e-6, atol=1e-7
  )  # jit vs eager: same draws, last-bit differences
