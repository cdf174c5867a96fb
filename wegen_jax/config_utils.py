"""Helpers for `get_config(arg)` files: parsing `key=value,key=value` config args."""
from __future__ import annotations

import ast


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
