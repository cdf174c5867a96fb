"""UNet output and gradients on 8 virtual CPU devices (tests/conftest.py forces them) equal the
single-device result on meshes (data, fsdp, tensor) = (8,1,1), (2,2,2), (1,2,4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("diffusers")

from tests.test_diffusion_refs import diffusers_unet  # noqa: E402
from wegen_jax import convert  # noqa: E402
from wegen_jax.parallel import activation_sharding, make_mesh, shard_module  # noqa: E402
from sharding_harness import MESHES, mesh_id, rel_err


def out_and_grads(model, x, t, ctx, mesh=None):
  graphdef, state = nnx.split(model)

  @jax.jit
  def step(state, x, t, ctx):
    def loss_fn(state):
      out = nnx.merge(graphdef, state)(x, t, ctx)
      return jnp.mean(jnp.square(out - 0.1)), out

    (_, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state)
    return out, grads

  if mesh is None:
    return step(state, x, t, ctx)
  with activation_sharding(mesh):
    return step(state, x, t, ctx)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  path = tmp_path_factory.mktemp("tiny_unet")
  diffusers_unet("micro").save_pretrained(path)
  rng = np.random.RandomState(0)
  inputs = (
    jnp.asarray(rng.randn(8, 4, 8, 8).astype(np.float32)),
    jnp.asarray(rng.randint(0, 1000, (8,))),
    jnp.asarray(rng.randn(8, 5, 8).astype(np.float32)),
  )
  return path, inputs, out_and_grads(convert.load_diffusers_unet(path), *inputs)


@pytest.mark.parametrize("shape", MESHES, ids=mesh_id)
def test_sharded_output_and_grads_match_single_device(shape, setup):
  assert jax.device_count() >= 8, "tests/conftest.py should force 8 host devices"
  path, inputs, (ref_out, ref_grads) = setup
  mesh = make_mesh(dict(zip(("data", "fsdp", "tensor"), shape)))
  # remat on one mesh: rematerialisation must not change the numbers either
  model = shard_module(convert.load_diffusers_unet(path, remat=shape == (2, 2, 2)), mesh)
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  inputs = [jax.device_put(a, batch_sharding) for a in inputs]
  out, grads = out_and_grads(model, *inputs, mesh=mesh)
  assert rel_err(out, ref_out) <= 1e-5
  flat_ref, flat = dict(nnx.to_flat_state(ref_grads)), dict(nnx.to_flat_state(grads))
  assert flat.keys() == flat_ref.keys()
  for path_, g in flat.items():
    assert rel_err(g.get_value(), flat_ref[path_].get_value()) <= 1e-5, path_
  if shape != (8, 1, 1):  # parameters really are distributed
    kernel = model.up_blocks[0].resnets[0].conv1.kernel.get_value()
    assert not kernel.sharding.is_fully_replicated


def test_every_parameter_has_logical_axes(setup):
  path = setup[0]
  from wegen_jax.layers.paths import param_paths

  for name, var in param_paths(convert.load_diffusers_unet(path)).items():
    axes = var.get_metadata().get("logical_axes")
    assert axes is not None and len(axes) == var.get_value().ndim, name
