"""Test-only stand-in for torchvision, so that `import timm` works in the parity tests.

Why: timm imports torchvision at import time (FrozenBatchNorm2d, transforms, datasets,
feature extraction), but no torchvision wheel loads with the CPU torch build this project
pins, and installing one would upgrade torch. The ViT/EVA code paths the tests use never
call torchvision; every name here is a placeholder that raises if it is actually used, so
a test cannot silently depend on it. Only tests/_timm.py puts this package on sys.path.
"""

import enum
import sys
import types

__version__ = "0.0.0+wegen-test-stub"


class InterpolationMode(enum.Enum):
  NEAREST = "nearest"
  NEAREST_EXACT = "nearest-exact"
  BILINEAR = "bilinear"
  BICUBIC = "bicubic"
  BOX = "box"
  HAMMING = "hamming"
  LANCZOS = "lanczos"


def _placeholder(module_name: str, name: str) -> type:
  def __init__(self, *args, **kwargs):
    raise NotImplementedError(
      f"{module_name}.{name} is a test stub (tests/_torchvision_stub): real torchvision is not installed"
    )

  return type(name, (), {"__init__": __init__, "__module__": module_name})


class _StubModule(types.ModuleType):
  """A module whose every unknown attribute is a raising placeholder class."""

  def __getattr__(self, name: str):
    if name.startswith("__"):
      raise AttributeError(name)
    value = _placeholder(self.__name__, name)
    setattr(self, name, value)
    return value


_SUBMODULES = (
  "ops",
  "ops.misc",
  "models",
  "models.feature_extraction",
  "datasets",
  "utils",
  "transforms",
  "transforms.functional",
  "transforms.v2",
)
for _sub in _SUBMODULES:
  _mod = _StubModule(f"{__name__}.{_sub}")
  _mod.__path__ = []  # a package, so `from torchvision.x.y import z` resolves
  sys.modules[_mod.__name__] = _mod
  _parent, _, _leaf = _mod.__name__.rpartition(".")
  setattr(sys.modules[_parent], _leaf, _mod)
sys.modules[f"{__name__}.transforms"].InterpolationMode = InterpolationMode
sys.modules[f"{__name__}.transforms.functional"].InterpolationMode = InterpolationMode
