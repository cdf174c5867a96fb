"""MGCC (arXiv 2405.18304): GILL plus the Cross-Modal Refinement Module and box-grounded generation.

  python -m wegen_jax.train --config configs/mgcc.py:size=tiny --workdir /tmp/mgcc

The same system as configs/gill.py (task "gill") with model.refine (cross-attention from the [IMG]
states to the multimodal context, systems/gill/refine.py) and model.grounding (the LLM writes the
layout of a multi-object prompt, a GLIGEN UNet draws it; systems/gill/grounding.py). The
refinement starts as the identity (zero gates), so a GILL release loads and trains on; a
GLIGEN UNet comes from --config.pretrained.gligen=/w/gligen-generation-text-box/unet.
arg: size=tiny|6.7b.
"""

from wegen_jax.config_utils import load_config, parse_arg


def get_config(arg=None):
  args = parse_arg(arg, size="tiny")
  c = load_config(f"configs/gill.py:size={args['size']}")
  c.model.refine = True
  c.model.refine_layers = 1
  c.model.refine_heads = 4 if args["size"] == "tiny" else 32
  c.model.grounding = True
  c.model.max_boxes = 4 if args["size"] == "tiny" else 30
  return c
