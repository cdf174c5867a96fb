"""LLM backbones: real dimensions for pods, tiny variants for CPU.

  python -m wegen_jax.generate --config configs/lm_generate.py:model=tiny_llama --workdir /tmp/llm

Random-initialises the model (or loads `--config.checkpoint=HF_DIR`), round-trips it through
the HF export/import, and decodes `prompt_ids` (or `prompt`, with the checkpoint's
tokenizer.json); prints tokens and tokens/s and writes WORKDIR/generations.jsonl.

arg: model=<preset> (wegen_jax/models/presets.py), e.g. configs/lm_generate.py:model=llama3_8b. Any field can be
overridden, e.g. --config.model.dtype=bfloat16 --config.mesh.tensor=4.
"""

import ml_collections

from wegen_jax.config_utils import parse_arg
from wegen_jax.models.presets import LLM_DEFAULTS, LLM_PRESETS
from wegen_jax.parallel.sharding import DEFAULT_RULES


def get_config(arg=None):
  args = parse_arg(arg, model="tiny_llama")
  if args["model"] not in LLM_PRESETS:
    raise ValueError(f"unknown model {args['model']!r}; presets: {sorted(LLM_PRESETS)}")
  c = ml_collections.ConfigDict()
  c.model_name = args["model"]
  c.model = dict(LLM_DEFAULTS, **LLM_PRESETS[args["model"]])
  c.checkpoint = ""  # HF directory; empty = random init
  c.seed = 0
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  c.sharding_rules = [list(r) for r in DEFAULT_RULES]
  c.prompt = ""  # text; needs tokenizer.json next to the checkpoint
  c.prompt_ids = [[1, 17, 42, 99, 7], [1, 5, 64]]
  c.sampling = dict(max_new_tokens=32, temperature=0.0, top_k=0, top_p=1.0, stop_tokens=(), pad_token=0)
  return c
