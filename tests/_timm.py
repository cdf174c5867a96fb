"""Imports timm for the parity tests, with the torchvision stand-in (see
tests/_torchvision_stub/torchvision/__init__.py for why) when real torchvision is absent.

The stand-in is visible only while timm imports: afterwards it leaves sys.modules and
sys.path again, so libraries that probe for torchvision (transformers does, lazily) keep
seeing that it is not installed. timm keeps the placeholder names it imported."""

import importlib.util
import os
import sys

import pytest

_STUB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_torchvision_stub")


def import_timm():
  pytest.importorskip("torch")
  if importlib.util.find_spec("timm") is None:
    pytest.skip("timm is not installed")
  if "timm.models.eva" in sys.modules or importlib.util.find_spec("torchvision") is not None:
    import timm.models.eva  # noqa: F401

    return sys.modules["timm"]
  sys.path.insert(0, _STUB)
  try:
    import timm.models.eva  # noqa: F401
  finally:
    sys.path.remove(_STUB)
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
      del sys.modules[name]
  return sys.modules["timm"]
