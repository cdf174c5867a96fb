"""The conversion CLI: HF -> wegen_jax (Orbax) -> HF, inspect, and error exit codes."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wegen_jax import convert
from wegen_jax.convert.checkpoint_io import SafetensorsFile, save_safetensors
from wegen_jax.convert.cli import main
from wegen_jax.convert.native import load_native
from wegen_jax.models import LLM, LLMConfig


def test_hf_to_native_and_back(tmp_path, capsys):
  cfg = LLMConfig(
    family="qwen2",
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    qkv_bias=True,
    tie_word_embeddings=True,
  )
  model = LLM(cfg, rngs=nnx.Rngs(1))
  convert.save_hf_llm(model, tmp_path / "hf")
  assert main(["hf-llm-to-jax", "--src", str(tmp_path / "hf"), "--out", str(tmp_path / "native")]) == 0
  native = load_native(tmp_path / "native")
  assert native.cfg == cfg
  ids = jnp.arange(12)[None] % 64
  np.testing.assert_array_equal(np.asarray(native(ids)), np.asarray(model(ids)))
  assert main(["jax-to-hf-llm", "--src", str(tmp_path / "native"), "--out", str(tmp_path / "back")]) == 0
  np.testing.assert_array_equal(np.asarray(convert.load_hf_llm(tmp_path / "back")(ids)), np.asarray(model(ids)))
  assert main(["inspect", str(tmp_path / "back")]) == 0
  assert "model.layers.1.self_attn.q_proj.bias" in capsys.readouterr().out


def test_errors_exit_2_with_the_path(tmp_path, capsys):
  assert main(["hf-llm-to-jax", "--src", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
  assert "missing" in capsys.readouterr().err


REPO = Path(__file__).resolve().parents[1]
TINY = LLMConfig(
  family="llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4, num_kv_heads=2
)


def write_raw(path, header, data=b"", length=None):
  blob = json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)
  return path


BAD_FILES = {  # header, data, header length or None, expected text after the file name
  "shape_vs_bytes": (
    {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}},
    bytes(16),
    None,
    ": tensor 'w': data_offsets [0, 16] hold 16 bytes but shape [2, 3] of F32 needs 24",
  ),
  "negative_offset": (
    {"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}},
    bytes(8),
    None,
    ": tensor 'w': data_offsets [-8, 0] is not a pair of non-negative integers",
  ),
  "header_list": ([1, 2], bytes(8), None, ": not a valid safetensors file: header is a JSON list, not an object"),
  "past_end": (
    {"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}},
    bytes(8),
    None,
    " is truncated: tensor 'w' ends at byte",
  ),
  "header_too_long": ({}, b"", 4096, ": not a valid safetensors file: header length 4096 is larger than"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_malformed_safetensors_exit_2_with_one_line_error(tmp_path, case):
  header, data, length, message = BAD_FILES[case]
  f = write_raw(tmp_path / "model.safetensors", header, data, length)
  out = subprocess.run(
    [sys.executable, "-m", "wegen_jax.convert", "inspect", str(f)],
    cwd=REPO,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 2, out.stderr[-3000:]
  assert "Traceback" not in out.stderr
  lines = out.stderr.strip().splitlines()
  assert lines[-1].startswith(f"error: {f}{message}"), out.stderr


def test_convert_with_a_malformed_shard_exits_2(tmp_path, capsys):
  convert.save_hf_llm(LLM(TINY, rngs=nnx.Rngs(0)), tmp_path / "hf")
  f = tmp_path / "hf" / "model.safetensors"
  header_len = struct.unpack("<Q", f.read_bytes()[:8])[0]
  header = json.loads(f.read_bytes()[8 : 8 + header_len])
  header["model.norm.weight"]["shape"] = [33]  # 32 floats on disk
  write_raw(f, header, f.read_bytes()[8 + header_len :])
  assert main(["hf-llm-to-jax", "--src", str(tmp_path / "hf"), "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err
  assert (
    err.startswith(f"error: {f}: tensor 'model.norm.weight': data_offsets") and "shape [33] of F32 needs 132" in err
  )


def test_non_finite_weights_warn_on_stderr(tmp_path, capsys):
  convert.save_hf_llm(LLM(TINY, rngs=nnx.Rngs(0)), tmp_path / "hf")
  f = tmp_path / "hf" / "model.safetensors"
  tensors = dict(SafetensorsFile(f))
  q = np.array(tensors["model.layers.0.self_attn.q_proj.weight"])
  q[0, :4] = np.nan
  tensors["model.layers.0.self_attn.q_proj.weight"] = q
  save_safetensors(tensors, f)
  assert main(["hf-llm-to-jax", "--src", str(tmp_path / "hf"), "--out", str(tmp_path / "native")]) == 0
  err = capsys.readouterr().err
  assert (
    "warning: " in err
    and "1 tensor(s) hold non-finite values" in err
    and "'model.layers.0.self_attn.q_proj.weight' (4 of 1024 values)" in err
  ), err
