"""Imports timm for the parity tests, with the torchvision stand-in (see
tests/_torchvision_stub/torchvision/__init__.py for why) when real torchvision is absent."""
import importlib.util
import os
import sys

import pytest


def import_timm():
  pytest.importorskip("torch")
  if importlib.util.find_spec("timm") is None:
    pytest.skip("timm is not installed")
  if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_torchvision_stub"))
  import timm.models.eva
  return timm
