"""Checkpoint files: sharded/bf16 safetensors, and clear errors for bad input."""

import json
import struct

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from wegen_jax import convert
from wegen_jax.convert import CheckpointError, CheckpointFormatError, NonFiniteWeightsWarning
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


def write_raw(path, header, data=b"", length=None):
  """A hand-made safetensors file: 8-byte little-endian header length, the header, the data."""
  blob = header if isinstance(header, bytes) else json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)
  return path


def f32(shape, offsets):
  return {"w": {"dtype": "F32", "shape": shape, "data_offsets": offsets}}


BAD_HEADERS = {  # case: (header, data, header length or None, expected message)
  "shape_disagrees_with_bytes": (
    f32([2, 3], [0, 16]),
    bytes(16),
    None,
    r"tensor 'w': data_offsets \[0, 16\] hold 16 bytes but shape \[2, 3\] of F32 needs 24",
  ),
  "negative_offset": (
    f32([2, 2], [-8, 8]),
    bytes(16),
    None,
    r"tensor 'w': data_offsets \[-8, 8\] is not a pair of non-negative integers",
  ),
  "header_is_a_list": ([{"dtype": "F32"}], bytes(4), None, r"not a valid safetensors file: header is a JSON list"),
  "offsets_past_end_of_file": (
    f32([4, 4], [0, 64]),
    bytes(16),
    None,
    r"is truncated: tensor 'w' ends at byte \d+ but the file has \d+ bytes",
  ),
  "header_length_past_file": (f32([1], [0, 4]), bytes(4), 10**6, r"header length 1000000 is larger than the \d+ bytes"),
  "begin_after_end": (f32([0], [8, 4]), bytes(8), None, r"tensor 'w': data_offsets \[8, 4\] begin after they end"),
  "offsets_not_a_pair": (f32([1], [0, 4, 8]), bytes(8), None, r"tensor 'w': data_offsets \[0, 4, 8\] is not a pair"),
  "negative_dim": (f32([-1, 4], [0, 16]), bytes(16), None, r"tensor 'w': shape \[-1, 4\] is not a list of non-neg"),
  "shape_not_a_list": (f32(4, [0, 16]), bytes(16), None, r"tensor 'w': shape 4 is not a list of non-negative"),
  "float_dim": (f32([2.0], [0, 8]), bytes(8), None, r"tensor 'w': shape \[2.0\] is not a list"),
  "unknown_dtype": (
    {"w": {"dtype": "F8_E9", "shape": [1], "data_offsets": [0, 1]}},
    bytes(8),
    None,
    r"tensor 'w': unsupported dtype 'F8_E9'",
  ),
  "missing_field": (
    {"w": {"dtype": "F32", "shape": [1]}},
    bytes(8),
    None,
    r"tensor 'w': header entry has no 'data_off",
  ),
  "entry_not_an_object": ({"w": [0, 4]}, bytes(8), None, r"tensor 'w': header entry is a JSON list, not an object"),
  "metadata_not_strings": (
    {"__metadata__": {"format": 1}, **f32([1], [0, 4])},
    bytes(8),
    None,
    r"not a valid safetensors file: __metadata__ .* is not an object of string values",
  ),
  "header_not_json": (b"{not json", bytes(8), None, r"not a valid safetensors file: header is not valid JSON"),
  "header_length_zero": (b"", bytes(8), None, r"header length 0 is outside"),
}


def test_hand_made_safetensors_file_reads(tmp_path):
  data = np.arange(6, dtype=np.float32)
  f = write_raw(tmp_path / "ok.safetensors", {"__metadata__": {"format": "pt"}, **f32([2, 3], [0, 24])}, data.tobytes())
  sf = SafetensorsFile(f)
  assert sf.metadata == {"format": "pt"} and list(sf) == ["w"]
  np.testing.assert_array_equal(sf["w"], data.reshape(2, 3))


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_bad_safetensors_header_is_a_format_error_naming_file_and_tensor(tmp_path, case):
  header, data, length, message = BAD_HEADERS[case]
  f = write_raw(tmp_path / f"{case}.safetensors", header, data, length)
  with pytest.raises(CheckpointError, match=message) as info:
    read_state_dict(f)  # validated on open, before any tensor is read
  assert isinstance(info.value, CheckpointFormatError) and isinstance(info.value, ValueError)
  assert str(info.value).startswith(str(f))


def test_bad_shard_index(tmp_path):
  save_state_dict({"a": np.ones(300, np.float32), "b": np.ones(300, np.float32)}, tmp_path, max_shard_bytes=1000)
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weights": {}}))
  with pytest.raises(CheckpointFormatError, match="model.safetensors.index.json: not a shard index"):
    read_state_dict(tmp_path)


def test_non_finite_weights_warn_with_names_and_counts(hf_dir):
  path, _ = hf_dir
  tensors = dict(SafetensorsFile(path / "model.safetensors"))
  norm = np.array(tensors["model.norm.weight"])
  norm[:3] = [np.nan, np.inf, -np.inf]
  embed = np.array(tensors["model.embed_tokens.weight"])
  embed[5, 7] = np.nan
  tensors.update({"model.norm.weight": norm, "model.embed_tokens.weight": embed})
  save_safetensors(tensors, path / "model.safetensors")
  with pytest.warns(NonFiniteWeightsWarning, match=r"2 tensor\(s\) hold non-finite values") as record:
    convert.load_hf_llm(path)
  (message,) = [str(w.message) for w in record if w.category is NonFiniteWeightsWarning]
  assert "'model.norm.weight' (3 of 32 values)" in message
  assert "'model.embed_tokens.weight' (1 of 2048 values)" in message
