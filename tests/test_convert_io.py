"""Checkpoint files: sharded/bf16 safetensors, and clear errors for bad input."""

import json

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from wegen_jax import convert
from wegen_jax.convert import CheckpointError
from wegen_jax.convert.checkpoint_io import SafetensorsFile, read_state_dict, save_safetensors, save_state_dict
from wegen_jax.models import LLM, LLMConfig

CFG = LLMConfig(
  family="llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2
)


@pytest.fixture
def hf_dir(tmp_path):
  model = LLM(CFG, rngs=nnx.Rngs(0))
  convert.save_hf_llm(model, tmp_path / "m")
  return tmp_path / "m", model


def test_bf16_and_sharded_files_round_trip(tmp_path):
  tensors = {
    "a": np.arange(12, dtype=np.float32).reshape(3, 4).astype(ml_dtypes.bfloat16),
    "b": np.ones((1000,), np.float32),
    "c": np.arange(5, dtype=np.int64),
  }
  save_state_dict(tensors, tmp_path, max_shard_bytes=2000)
  index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) >= 2
  loaded = read_state_dict(tmp_path)
  assert sorted(loaded) == ["a", "b", "c"]
  for k, v in tensors.items():
    assert loaded[k].dtype == v.dtype
    np.testing.assert_array_equal(np.asarray(loaded[k]), v)


def test_bf16_checkpoint_loads_into_float32_params(hf_dir, tmp_path):
  path, model = hf_dir
  convert.save_hf_llm(model, tmp_path / "bf16", dtype=ml_dtypes.bfloat16)
  again = convert.load_hf_llm(tmp_path / "bf16")
  assert again.embed.embedding.get_value().dtype == jnp.float32
  ids = jnp.arange(10)[None] % 64
  np.testing.assert_allclose(np.asarray(again(ids)), np.asarray(model(ids)), atol=0.05)


def test_bf16_compute_option(hf_dir):
  path, model = hf_dir
  fast = convert.load_hf_llm(path, dtype="bfloat16")
  assert fast.embed.embedding.get_value().dtype == jnp.float32  # master weights stay float32
  ids = jnp.arange(10)[None] % 64
  np.testing.assert_allclose(np.asarray(fast(ids)), np.asarray(model(ids)), atol=0.05)


def test_missing_directory_names_the_path(tmp_path):
  with pytest.raises(CheckpointError, match="no config.json in .*nowhere"):
    convert.load_hf_llm(tmp_path / "nowhere")


def test_missing_weights_file(hf_dir):
  path, _ = hf_dir
  (path / "model.safetensors").unlink()
  with pytest.raises(CheckpointError, match="no weights in"):
    convert.load_hf_llm(path)


def test_truncated_file_names_file_and_tensor(hf_dir):
  path, _ = hf_dir
  f = path / "model.safetensors"
  f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  with pytest.raises(CheckpointError, match="truncated: tensor"):
    convert.load_hf_llm(path)


def test_garbage_file(hf_dir):
  path, _ = hf_dir
  (path / "model.safetensors").write_bytes(b"\x00\x01garbage")
  with pytest.raises(CheckpointError, match="model.safetensors"):
    convert.load_hf_llm(path)


def test_unsupported_architecture(hf_dir):
  path, _ = hf_dir
  cfg = json.loads((path / "config.json").read_text())
  cfg["model_type"] = "mamba"
  (path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError, match="unsupported architecture model_type='mamba'"):
    convert.load_hf_llm(path)


def test_shape_mismatch_names_tensor_and_parameter(hf_dir):
  path, _ = hf_dir
  cfg = json.loads((path / "config.json").read_text())
  cfg["intermediate_size"] = 40
  (path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.\w+_proj\.weight.*layers\.0\.mlp"):
    convert.load_hf_llm(path)


def test_missing_and_extra_tensors(hf_dir, tmp_path):
  path, _ = hf_dir
  tensors = dict(SafetensorsFile(path / "model.safetensors"))
  del tensors["model.norm.weight"]
  save_safetensors(tensors, path / "model.safetensors")
  with pytest.raises(CheckpointError, match="model.norm.weight"):
    convert.load_hf_llm(path)
  tensors["model.norm.weight"] = np.ones(32, np.float32)
  tensors["model.layers.9.extra.weight"] = np.ones(3, np.float32)
  save_safetensors(tensors, path / "model.safetensors")
  with pytest.raises(CheckpointError, match="does not use.*layers.9.extra"):
    convert.load_hf_llm(path)
