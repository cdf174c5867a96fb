"""Helpers for `get_config(arg)` files: finding and loading one, and parsing `key=value` args.

The repository's configs/ folder is installed as `wegen_jax.configs`, so a path such as
`configs/wegen.py` works from any directory: a file of that name under the working directory
wins, else the installed copy is used (`config_path`, `resolve_config_argv`).
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import importlib.resources
import os
import sys


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


def config_path(path: str) -> str:
  """`path` if it is a file, else the installed copy of `configs/<rest>` (e.g. configs/wegen.py)."""
  if os.path.isfile(path):
    return path
  head, _, rest = os.path.normpath(path).partition(os.sep)
  if head == "configs" and rest:
    packaged = importlib.resources.files("wegen_jax.configs").joinpath(rest)
    if packaged.is_file():
      return str(packaged)
  raise FileNotFoundError(
    f"config file not found: {path} (neither under {os.getcwd()} nor among the installed configs/: "
    f"{', '.join(sorted(packaged_configs()))})"
  )


def packaged_configs() -> list[str]:
  """Paths (as `configs/...`) of the installed config files."""
  root = importlib.resources.files("wegen_jax.configs")
  found, stack = [], [(root, "configs")]
  while stack:
    node, name = stack.pop()
    for child in node.iterdir():
      if child.is_dir() and child.name != "__pycache__":
        stack.append((child, f"{name}/{child.name}"))
      elif child.name.endswith(".py") and child.name != "__init__.py":
        found.append(f"{name}/{child.name}")
  return found


def resolve_config_argv(argv: list[str] | None = None, flag: str = "config", check: bool = True) -> list[str]:
  """argv with `--config PATH[:arg]` pointed at an existing file (see config_path), for absl's
  config_flags, which open the path as given. Missing files are left for the flag to report.
  check: exit 2 with one line for a config that does not load or an override of an unknown field
  (check_overrides), before absl would print a traceback."""
  argv = list(sys.argv if argv is None else argv)
  resolved = None
  for i, item in enumerate(argv):
    if item == f"--{flag}" and i + 1 < len(argv):
      j, prefix, value = i + 1, "", argv[i + 1]
    elif item.startswith(f"--{flag}="):
      j, prefix, value = i, f"--{flag}=", item[len(flag) + 3 :]
    else:
      continue
    path, sep, arg = value.partition(":")
    try:
      argv[j] = prefix + config_path(path) + sep + arg
      resolved = argv[j][len(prefix) :]
    except FileNotFoundError:
      pass
  if check and resolved is not None:
    try:
      check_overrides(load_config(resolved), argv, flag)
    except (ValueError, KeyError, TypeError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
  return argv


def flat_keys(config, prefix: str = "") -> list[str]:
  """Dotted names of every field of a ConfigDict (nested dicts included)."""
  out = []
  for key, value in config.items():
    name = f"{prefix}{key}"
    out.append(name)
    if hasattr(value, "items"):
      out += flat_keys(value, name + ".")
  return out


def check_overrides(config, argv: list[str], flag: str = "config") -> None:
  """Raises KeyError naming an unknown `--config.a.b=` field and the closest known names."""
  known = flat_keys(config)
  for item in argv:
    if not item.startswith(f"--{flag}."):
      continue
    name = item[len(flag) + 3 :].partition("=")[0]
    node, parts = config, name.split(".")
    for depth, part in enumerate(parts):
      if not hasattr(node, "items") or part not in node:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else "; see the config file for its fields"
        raise ValueError(f"--{flag}.{name}: {'.'.join(parts[: depth + 1])!r} is not a field of the config{hint}")
      node = node[part]


def load_config(spec: str):
  """The config of `path/to/config.py` or `path/to/config.py:arg` (for CLIs without absl flags)."""
  path, _, arg = spec.partition(":")
  path = config_path(path)
  mod_spec = importlib.util.spec_from_file_location(f"_cfg_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  return module.get_config(arg or None)
