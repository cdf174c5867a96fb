"""Loads `get_config(arg)` config files by path: `path/to/config.py` or `path/to/config.py:arg`."""
from __future__ import annotations

import importlib.util
import os


def load_config(spec: str):
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    mod_spec = importlib.util.spec_from_file_location(f"_cfg_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.get_config(arg or None)
