"""Decode with an LLM from a config: `python -m wegen_jax.generate --config configs/lm_generate.py:model=tiny_llama --workdir DIR`.

Without `config.checkpoint` the model is randomly initialised, written as an HF directory
(WORKDIR/hf_model) and read back through the converter, so the demo exercises the same
path as real weights; with PyTorch installed it also checks the export against HF.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from wegen_jax.config_utils import resolve_config_argv

from wegen_jax import convert
from wegen_jax.generation import SamplingConfig, generate, left_pad
from wegen_jax.models import LLM, LLMConfig
from wegen_jax.parallel import make_mesh, shard_module

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/lm_generate.py[:arg]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/wegen_llm", "where outputs are written")


def _hf_check(model: LLM, hf_dir: Path, ids: np.ndarray) -> str:
  try:
    import torch
    import transformers
  except ImportError:
    return "PyTorch not installed: skipped the HF comparison"
  hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
  with torch.no_grad():
    ref = hf(torch.tensor(ids)).logits.numpy()
  diff = float(np.abs(np.asarray(model(ids)) - ref).max())
  return f"HF transformers loads the export: max |logits - HF logits| = {diff:.2e}"


def main(_):
  cfg = _CONFIG.value
  workdir = Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = make_mesh(dict(cfg.mesh))
  tokenizer = None
  if cfg.checkpoint:
    model = convert.load_hf_llm(
      cfg.checkpoint, mesh=mesh, sharding_rules=cfg.sharding_rules, dtype=cfg.model.dtype, remat=cfg.model.remat
    )
    tok_file = Path(cfg.checkpoint) / "tokenizer.json"
    if tok_file.is_file():
      import tokenizers

      tokenizer = tokenizers.Tokenizer.from_file(str(tok_file))
  else:
    model = LLM(LLMConfig(**cfg.model), rngs=nnx.Rngs(cfg.seed))
    hf_dir = workdir / "hf_model"
    convert.save_hf_llm(model, hf_dir)
    reloaded = convert.load_hf_llm(hf_dir, dtype=cfg.model.dtype)
    probe = np.asarray(cfg.prompt_ids[0], np.int32)[None]
    diff = float(np.abs(np.asarray(reloaded(probe)) - np.asarray(model(probe))).max())
    print(f"exported {cfg.model_name} to {hf_dir} and re-imported it: max logit diff {diff:.1e}")
    print(_hf_check(model, hf_dir, probe))
    model = shard_module(reloaded, mesh, cfg.sharding_rules)
  if cfg.prompt:
    if tokenizer is None:
      raise SystemExit("config.prompt needs tokenizer.json in config.checkpoint; use prompt_ids instead")
    rows = [tokenizer.encode(cfg.prompt).ids]
  else:
    rows = [list(r) for r in cfg.prompt_ids]
  sampling = SamplingConfig(**{k: (tuple(v) if k == "stop_tokens" else v) for k, v in cfg.sampling.items()})
  ids, mask = left_pad(rows, sampling.pad_token)
  rng = jax.random.key(cfg.seed)
  out = generate(model, ids, attention_mask=mask, sampling=sampling, rng=rng)  # compile + run
  jax.block_until_ready(out.tokens)
  start = time.perf_counter()
  out = generate(model, ids, attention_mask=mask, sampling=sampling, rng=rng)
  jax.block_until_ready(out.tokens)
  seconds = time.perf_counter() - start
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  with open(workdir / "generations.jsonl", "w") as f:
    for prompt, row, n in zip(rows, tokens, lengths):
      record = {"prompt_ids": prompt, "tokens": row[:n].tolist()}
      if tokenizer is not None:
        record["text"] = tokenizer.decode(row[:n].tolist())
      f.write(json.dumps(record) + "\n")
      print(record)
  print(
    f"decoded {int(lengths.sum())} tokens in {seconds:.3f}s "
    f"({lengths.sum() / seconds:.0f} tokens/s, batch {len(rows)}) -> {workdir / 'generations.jsonl'}"
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, argv=resolve_config_argv())
