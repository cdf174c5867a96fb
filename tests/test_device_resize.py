"""data/device_resize.py against PIL and the host preprocessing it replaces."""

import jax
import numpy as np
import pytest
from PIL import Image

from wegen_jax.data.device_resize import resize_uint8, tower_inputs
from wegen_jax.data.image_preprocess import preprocess_image, sd_preprocess

_PIL = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def _frames(n, size, seed=0):
  rs = np.random.RandomState(seed)
  smooth = rs.randint(0, 256, (n, size // 4 + 1, size // 4 + 1, 3)).repeat(4, 1).repeat(4, 2)[:, :size, :size]
  noise = rs.randint(0, 256, (n, size, size, 3))
  return np.where(rs.rand(n, size, size, 1) < 0.5, smooth, noise).astype(np.uint8)  # edges and flat runs


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("src,dst", [(16, 28), (24, 7), (33, 64), (64, 448), (256, 96), (20, 20)])
def test_resize_is_pils_bit_for_bit(method, src, dst):
  frames = _frames(2, src)
  got = np.asarray(jax.jit(resize_uint8, static_argnums=(1, 2))(frames, dst, method))
  want = np.stack([np.asarray(Image.fromarray(f).resize((dst, dst), _PIL[method])) for f in frames])
  np.testing.assert_array_equal(got, want)


def test_tower_inputs_equal_the_host_preprocessing():
  frames = _frames(3, 40, seed=1).reshape(1, 3, 40, 40, 3)  # [B, N, F, F, 3]
  pixel_values, vae_pixels = jax.jit(tower_inputs, static_argnums=(1, 2))(frames, 56, 72)
  assert pixel_values.shape == (1, 3, 3, 56, 56) and vae_pixels.shape == (1, 3, 3, 72, 72)
  for i, f in enumerate(frames[0]):
    np.testing.assert_allclose(np.asarray(pixel_values[0, i]), preprocess_image(f, 56), atol=1e-6)
    np.testing.assert_allclose(np.asarray(vae_pixels[0, i]), sd_preprocess(f, 72), atol=1e-6)


def test_non_uint8_frames_are_refused():
  with pytest.raises(ValueError, match="uint8"):
    resize_uint8(np.zeros((4, 4, 3), np.float32), 8)


@pytest.mark.parametrize("stage", [1, 2])
def test_wegen_loss_from_frames_equals_the_host_path(stage, tok_records):
  """The same curated-like records through the pipeline both ways: the stage's loss (and every
  term) is the same whether the host or the train step made the tower inputs; and on a 2x2x2
  mesh with the frames batch-sharded."""
  import jax.numpy as jnp
  from flax import nnx
  from jax.sharding import NamedSharding

  from wegen_batches import random_model, tiny_config
  from wegen_jax.parallel import activation_sharding, logical_to_spec, make_mesh, shard_module
  from wegen_jax.systems.wegen import WeGenConfig
  from wegen_jax.systems.wegen.pipeline import records_to_row
  from wegen_jax.systems.wegen.task import WeGenTask

  tok, records = tok_records
  results = {}
  for device in (False, True):
    config = tiny_config(stage=stage, max_len=320, device_preprocess=device, frame_size=20)
    rows = [records_to_row([r], tok, config.data) for r in records]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    assert ("frames" in batch) == device and ("pixel_values" in batch) != device
    task = WeGenTask(config)
    graphdef, state = nnx.split(random_model(WeGenConfig.from_dict(config.model)))
    fn = jax.jit(lambda s, b: task.loss_fn(nnx.merge(graphdef, s), b, jax.random.key(0)))
    results[device] = fn(state, batch)
    if device:
      mesh = make_mesh(dict(data=2, fsdp=2, tensor=2))
      model = shard_module(random_model(WeGenConfig.from_dict(config.model)), mesh)
      put = lambda k, v: jax.device_put(v, NamedSharding(mesh, logical_to_spec(task.batch_axes(k), None, mesh, None)))
      with activation_sharding(mesh):
        graphdef, state = nnx.split(model)
        results["sharded"] = fn(state, {k: put(k, jnp.asarray(v)) for k, v in batch.items()})
  (host_loss, host_terms), (dev_loss, dev_terms) = results[False], results[True]
  assert float(host_loss) > 0
  np.testing.assert_allclose(float(dev_loss), float(host_loss), rtol=1e-6)
  for k in host_terms:
    np.testing.assert_allclose(float(dev_terms[k]), float(host_terms[k]), rtol=1e-6, atol=1e-7, err_msg=k)
  np.testing.assert_allclose(float(results["sharded"][0]), float(host_loss), rtol=2e-5)


@pytest.fixture(scope="module")
def tok_records():
  from wegen_jax.systems.wegen.tokenizer import load_tokenizer

  frames = _frames(8, 20, seed=2).reshape(4, 2, 20, 20, 3)
  records = [
    {"frames": f, "dynamics": [f"the red circle moves {w}"], "caption": "c", "labelled": True}
    for f, w in zip(frames, ["up", "down", "left", "right"])
  ]
  return load_tokenizer(""), records


def test_frames_of_another_size_name_the_setting(tok_records):
  from wegen_batches import tiny_config
  from wegen_jax.systems.wegen.pipeline import records_to_row

  tok, records = tok_records
  config = tiny_config(stage=2, max_len=320, device_preprocess=True, frame_size=32)
  with pytest.raises(ValueError, match="data.frame_size=32.*frame_size \\(20\\)"):
    records_to_row(records[:1], tok, config.data)
