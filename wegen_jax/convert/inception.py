"""pytorch-fid's Inception weights (pt_inception-2015-12-05-6726825d.pth) -> models.inception.

The .pth is torchvision's inception_v3 state dict with the FID blocks; our attribute names are
torchvision's, so every rule maps `<block>.conv.kernel` / `<block>.bn.{scale,bias,mean,var}`
to `<block>.conv.weight` / `<block>.bn.{weight,bias,running_mean,running_var}`. The 1008-class
fc is not used by FID.
"""

from __future__ import annotations

import os
from pathlib import Path

from flax import nnx

from wegen_jax.convert.checkpoint_io import CheckpointError, load_torch_file
from wegen_jax.convert.mapping import CONV, Rule, load_state_dict
from wegen_jax.layers.paths import param_paths
from wegen_jax.models.inception import InceptionV3

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_NAME}"
_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def rules() -> list[Rule]:
  """One rule per parameter (the block names are fixed by the architecture)."""
  out = []
  for path in param_paths(nnx.eval_shape(lambda: InceptionV3(rngs=nnx.Rngs(0)))):
    block, kind, name = path.rsplit(".", 2)
    if kind == "conv":
      out.append(Rule(path, f"{block}.conv.weight", CONV))
    else:
      out.append(Rule(path, f"{block}.bn.{_BN[name]}"))
  return out


def load_fid_inception(path: str | os.PathLike) -> InceptionV3:
  """The FID Inception-v3 with the weights of pytorch-fid's .pth (read with
  torch.load(weights_only=True); torch is imported only here)."""
  path = Path(path)
  if not path.is_file():
    raise CheckpointError(f"FID Inception weights not found: {path}; download {WEIGHTS_URL} to that path")
  model = nnx.eval_shape(lambda: InceptionV3(rngs=nnx.Rngs(0)))
  return load_state_dict(
    model, load_torch_file(path), rules(), ignore=[r"^fc\.", r"num_batches_tracked$"], source=str(path)
  )
