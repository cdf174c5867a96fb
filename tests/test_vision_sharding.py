"""Vision features on 8 virtual CPU devices (meshes over data, fsdp, tensor) equal the
single-device features: EVA tower + WeGen input projector, and CLIP text/image features.

tests/conftest.py forces 8 host devices before jax starts; when this file runs under a jax
that already started with fewer, the same checks run in a fresh subprocess instead."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wegen_jax.models.clip import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig
from wegen_jax.models.eva import EVAConfig, EVAVisionTower
from wegen_jax.models.projectors import InputProjector
from wegen_jax.parallel import activation_sharding, make_mesh, shard_module
from sharding_harness import MESHES, mesh_id, rel_err

EVA = EVAConfig(image_size=32, patch_size=4, width=32, depth=2, num_heads=4, mlp_dim=64)
CLIP = CLIPConfig(
  text=CLIPTextConfig(
    vocab_size=64,
    hidden_size=32,
    num_layers=1,
    num_heads=4,
    intermediate_size=64,
    max_position_embeddings=12,
    eos_token_id=63,
  ),
  vision=CLIPVisionConfig(image_size=16, patch_size=4, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64),
  projection_dim=16,
)


def build(remat="none"):
  eva = EVAVisionTower(EVA.replace(remat=remat), rngs=nnx.Rngs(0))
  proj = InputProjector(32, 48, num_queries=16, rngs=nnx.Rngs(1))
  clip = CLIPModel(CLIP.replace(remat=remat), rngs=nnx.Rngs(2))
  return eva, proj, clip


def inputs():
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 63, (8, 10))
  ids[:, 7] = 63
  return (rng.normal(size=(8, 3, 32, 32)).astype(np.float32), ids, rng.normal(size=(8, 3, 16, 16)).astype(np.float32))


@nnx.jit
def forward(eva, proj, clip, eva_px, ids, clip_px):
  tokens = eva(eva_px)
  return tokens, proj(tokens), clip.get_text_features(ids), clip.get_image_features(clip_px)


@functools.cache
def single_device():
  return forward(*build(), *map(jnp.asarray, inputs()))


def check_mesh(shape):
  jax.config.update("jax_default_matmul_precision", "highest")
  data, want = inputs(), single_device()
  mesh = make_mesh(dict(zip(("data", "fsdp", "tensor"), shape)))
  models = [shard_module(m, mesh) for m in build(remat="full")]
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  with activation_sharding(mesh):
    got = forward(*models, *(jax.device_put(x, batch_sharding) for x in data))
  for name, g, w in zip(("eva", "input_projector", "clip_text", "clip_image"), got, want):
    assert rel_err(g, w) <= 1e-5, (shape, name, rel_err(g, w))
  if shape != (8, 1, 1):  # parameters really are split across devices
    assert not models[0].blocks[0].mlp.fc1.kernel.get_value().sharding.is_fully_replicated


@pytest.mark.parametrize("shape", MESHES, ids=mesh_id)
def test_sharded_features_match_single_device(shape):
  if jax.device_count() >= 8:
    check_mesh(shape)
    return
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  code = (
    f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
    f"import test_vision_sharding as t; t.check_mesh({shape!r})"
  )
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
