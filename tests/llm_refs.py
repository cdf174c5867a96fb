"""Random tiny HF reference models for the LLM tests (one builder per covered variant)."""

import numpy as np

VOCAB = 96


def hf_models():
  """name -> zero-arg builder of a random float32 transformers causal LM."""
  from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM, Qwen2Config, Qwen2ForCausalLM

  common = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=2,
    num_attention_heads=4,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=0,
  )
  llama3_rope = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8,
    "rope_theta": 500000.0,
  }
  return {
    "llama3_gqa": lambda: LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, rope_scaling=llama3_rope, **common)),
    "llama_bias_headdim": lambda: LlamaForCausalLM(
      LlamaConfig(num_key_value_heads=1, head_dim=24, attention_bias=True, mlp_bias=True, hidden_act="gelu", **common)
    ),
    "qwen2_tied": lambda: Qwen2ForCausalLM(
      Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6, **common)
    ),
    "opt_proj": lambda: OPTForCausalLM(
      OPTConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        ffn_dim=112,
        num_hidden_layers=2,
        num_attention_heads=4,
        word_embed_proj_dim=32,
        max_position_embeddings=64,
        dropout=0.0,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
      )
    ),
    "opt_postnorm": lambda: OPTForCausalLM(
      OPTConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        ffn_dim=112,
        num_hidden_layers=2,
        num_attention_heads=4,
        do_layer_norm_before=False,
        max_position_embeddings=64,
        dropout=0.0,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
      )
    ),
  }


def random_ids(shape, seed=0):
  return np.random.RandomState(seed).randint(1, VOCAB, shape)
