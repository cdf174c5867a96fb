"""Helpers for `get_config(arg)` files: loading one by path, and parsing `key=value` args."""

from __future__ import annotations

import ast
import importlib.util
import os


def parse_arg(arg: str | None, **defaults):
  """'model=llama2_7b,stage=2' -> dict over `defaults` (values parsed as Python literals
  when possible). Unknown keys are an error so that typos do not pass silently."""
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"config arg {item!r} is not key=value (got arg {arg!r})")
    if key not in defaults:
      raise ValueError(f"unknown config arg {key!r}; known: {sorted(defaults)}")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def load_config(spec: str):
  """The config of `path/to/config.py` or `path/to/config.py:arg` (for CLIs without absl flags)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file not found: {path}")
  mod_spec = importlib.util.spec_from_file_location(f"_cfg_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  return module.get_config(arg or None)
