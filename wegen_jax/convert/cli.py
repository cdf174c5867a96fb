"""`python -m wegen_jax.convert`: conversions between PyTorch layouts and wegen_jax.

Each mode is a function registered in COMMANDS with its arguments; add a mode by
registering it (diffusers, CLIP and EVA modes live next to their converters).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Callable

import numpy as np

from wegen_jax.convert.checkpoint_io import CheckpointError, NonFiniteWeightsWarning, read_state_dict

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {}


def command(name: str, help_text: str, add_args: Callable[[argparse.ArgumentParser], None]):
  def register(fn):
    COMMANDS[name] = (help_text, add_args, fn)
    return fn

  return register


def src_out_args(p):
  """--src, --out, --dtype: the arguments of every conversion command."""
  p.add_argument("--src", required=True, help="input path")
  p.add_argument("--out", required=True, help="output directory (created)")
  p.add_argument("--dtype", default=None, help="dtype to store, e.g. bfloat16 (default: keep)")


@command(
  "inspect",
  "list the tensors (name, shape, dtype) of a checkpoint file or directory",
  lambda p: p.add_argument("path", help=".safetensors/.bin/.pt file or HF/diffusers directory"),
)
def _inspect(args):
  sd = read_state_dict(args.path)
  total = 0
  for name in sorted(sd):
    t = sd[name]
    total += int(np.prod(t.shape))
    print(f"{name:80s} {str(tuple(t.shape)):24s} {t.dtype}")
  print(f"{len(sd)} tensors, {total / 1e6:.2f}M parameters")


@command(
  "hf-llm-to-jax",
  "HF causal LM dir (Llama/Qwen2/Qwen2.5-VL text/OPT) -> wegen_jax checkpoint (Orbax params + wegen_model.json)",
  src_out_args,
)
def _hf_llm_to_jax(args):
  from wegen_jax.convert.hf_llm import load_hf_llm
  from wegen_jax.convert.native import save_native

  overrides = {"param_dtype": args.dtype} if args.dtype else {}
  model = load_hf_llm(args.src, **overrides)
  save_native(model, args.out)
  print(f"wrote {args.out} ({model.cfg.family}, {model.cfg.num_layers} layers)")


@command(
  "jax-to-hf-llm", "wegen_jax LLM checkpoint -> HF dir that AutoModelForCausalLM.from_pretrained loads", src_out_args
)
def _jax_to_hf_llm(args):
  from wegen_jax.convert.hf_llm import save_hf_llm
  from wegen_jax.convert.native import load_native

  save_hf_llm(load_native(args.src), args.out, dtype=args.dtype and np.dtype(args.dtype))
  print(f"wrote {args.out}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m wegen_jax.convert",
    description="Convert checkpoints between PyTorch layouts (HF transformers, diffusers, timm, the "
    "authors' files) and wegen_jax. Reads safetensors directly and .bin/.pt only with "
    "torch.load(weights_only=True); nothing is downloaded.",
    epilog="`python -m wegen_jax.convert MODE --help` explains each mode's arguments.",
  )
  sub = parser.add_subparsers(dest="mode", required=True, metavar="MODE")
  for name, (help_text, add_args, _) in COMMANDS.items():
    add_args(sub.add_parser(name, help=help_text, description=help_text))
  args = parser.parse_args(argv)
  with warnings.catch_warnings():
    warnings.simplefilter("always", NonFiniteWeightsWarning)
    show = warnings.showwarning

    def one_line(message, category, *rest, **kw):  # our warnings as `warning: ...`, no source line
      if issubclass(category, NonFiniteWeightsWarning):
        print(f"warning: {message}", file=sys.stderr, flush=True)
      else:
        show(message, category, *rest, **kw)

    warnings.showwarning = one_line
    try:
      COMMANDS[args.mode][2](args)
    except CheckpointError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
  return 0
