"""The conversion CLI: HF -> wegen_jax (Orbax) -> HF, inspect, and error exit codes."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from wegen_jax import convert
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
