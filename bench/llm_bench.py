"""LLM train step and decoding: wegen_jax vs PyTorch/transformers on this CPU, in one run.

  .venv/bin/python bench/llm_bench.py [--layers 4 --hidden 512 --seq 512 --batch 4]

Prints a markdown table (tokens/s of each and the ratio) and the achieved FLOP/s of the
JAX train step as a fraction of the matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from flax import nnx  # noqa: E402

from bench.common import compare, matmul_peak_flops, row, torch_matmul_peak_flops  # noqa: E402
from wegen_jax import convert  # noqa: E402
from wegen_jax.generation import SamplingConfig, generate  # noqa: E402
from wegen_jax.training import cross_entropy, next_token_labels  # noqa: E402


def train_flops_per_token(cfg, seq: int) -> float:
  """6 x matmul params (fwd+bwd) plus attention scores/values (12 x L x S x d, no causal discount)."""
  d, h = cfg.hidden_size, cfg.num_heads * cfg.dim_per_head
  kv = cfg.kv_heads * cfg.dim_per_head
  per_layer = d * (h + 2 * kv) + h * d + 3 * d * cfg.intermediate_size
  matmul_params = cfg.num_layers * per_layer + d * cfg.vocab_size
  return 6 * matmul_params + 12 * cfg.num_layers * seq * h


def jax_train_step(model, tx):
  graphdef, params = nnx.split(model)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, ids):
    def loss_fn(p):
      return cross_entropy(nnx.merge(graphdef, p)(ids), next_token_labels(ids))[0]

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  state = {"params": params, "opt": opt_state}

  def run(ids):
    state["params"], state["opt"], loss = step(state["params"], state["opt"], ids)
    loss.block_until_ready()

  return run


def torch_train_step(hf):
  opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.0)

  def run(ids):
    loss = hf(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

  return run


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--hidden", type=int, default=512)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--vocab", type=int, default=8192)
  p.add_argument("--seq", type=int, default=512)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--decode-batch", type=int, default=4)
  p.add_argument("--prompt", type=int, default=32)
  p.add_argument("--new-tokens", type=int, default=128)
  p.add_argument(
    "--decode-dtype",
    default=None,
    help="also time decoding with weights and cache in this dtype (e.g. bfloat16: half the weight stream), apart",
  )
  args = p.parse_args()
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count())
  hf_cfg = transformers.LlamaConfig(
    vocab_size=args.vocab,
    hidden_size=args.hidden,
    intermediate_size=int(args.hidden * 8 / 3) // 64 * 64,
    num_hidden_layers=args.layers,
    num_attention_heads=args.heads,
    num_key_value_heads=args.heads,
    max_position_embeddings=4096,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=0,
  )
  hf = transformers.LlamaForCausalLM(hf_cfg)
  with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d)
    model = convert.load_hf_llm(d)
    low = args.decode_dtype and convert.load_hf_llm(d, dtype=args.decode_dtype, param_dtype=args.decode_dtype)
  cfg = model.cfg
  ids = np.random.RandomState(0).randint(0, args.vocab, (args.batch, args.seq))
  tokens = args.batch * args.seq

  peak, torch_peak = matmul_peak_flops(), torch_matmul_peak_flops()
  jax_step = jax_train_step(model, optax.adamw(1e-4, weight_decay=0.0))
  hf.train()
  torch_step = torch_train_step(hf)
  ids_jax, ids_torch = jnp.asarray(ids), torch.tensor(ids)
  jax_s, torch_s = compare(lambda: jax_step(ids_jax), lambda: torch_step(ids_torch), warmup=2, repeats=5)
  flops = train_flops_per_token(cfg, args.seq) * tokens

  hf.eval()
  prompt = np.random.RandomState(1).randint(1, args.vocab, (args.decode_batch, args.prompt))
  sampling = SamplingConfig(max_new_tokens=args.new_tokens)

  def hf_generate():
    with torch.no_grad():
      hf.generate(
        torch.tensor(prompt),
        attention_mask=torch.ones(prompt.shape, dtype=torch.long),
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        do_sample=False,
      )

  jax_dec, torch_dec = compare(
    lambda: generate(model, prompt, sampling=sampling).tokens.block_until_ready(), hf_generate, warmup=1, repeats=5
  )
  new = args.decode_batch * args.new_tokens
  if low:
    low_dec, torch_dec2 = compare(
      lambda: generate(low, prompt, sampling=sampling).tokens.block_until_ready(), hf_generate, warmup=1, repeats=5
    )

  print(
    f"Llama {args.layers} layers, d {args.hidden}, vocab {args.vocab}, train batch {args.batch} x seq "
    f"{args.seq}; decode batch {args.decode_batch}, prompt {args.prompt}, {args.new_tokens} new tokens; "
    f"float32, {os.cpu_count()} CPU cores; jax {jax.__version__}, torch {torch.__version__}"
  )
  print("| measure | wegen_jax | PyTorch | ratio |\n|---|---|---|---|")
  print(row("train step (fwd+bwd+AdamW)", tokens / jax_s, tokens / torch_s, "tokens/s"))
  print(row("greedy decoding, KV cache", new / jax_dec, new / torch_dec, "tokens/s"))
  if low:
    print(
      row(f"greedy decoding, {args.decode_dtype} weights (HF float32)", new / low_dec, new / torch_dec2, "tokens/s")
    )
  # The host's speed drifts within a run (2048^2 matmuls measured 307-449 GFLOP/s on one idle
  # 2-core host in an hour): the fraction below uses the higher of the peaks measured before and
  # after the timed steps, the conservative choice.
  peak = max(peak, matmul_peak_flops())
  print(row("matmul peak (2048^2 f32, higher of before/after)", peak / 1e9, torch_peak / 1e9, "GFLOP/s"))
  print(
    f"JAX train step: {flops / jax_s / 1e9:.1f} GFLOP/s = {flops / jax_s / peak:.0%} of the measured "
    f"XLA matmul peak; PyTorch: {flops / torch_s / 1e9:.1f} GFLOP/s = {flops / torch_s / torch_peak:.0%} "
    "of its own"
  )


if __name__ == "__main__":
  main()
