"""GoT from the command line: write the reasoning chain, edit it, draw from it.

  # chain + image (T2I; --image SRC.png edits SRC instead)
  python -m wegen_jax.systems.got --config configs/got.py:size=tiny --workdir RUN \
      --prompt "a red circle at the top left on a gray background." --out /tmp/got.png --chain_out /tmp/chain.json
  # interactive editing: write the chain only, edit /tmp/chain.json (move a box, change a colour
  # or a phrase), then draw from the edited chain without writing a new one
  python -m wegen_jax.systems.got ... --only_chain --chain_out /tmp/chain.json
  python -m wegen_jax.systems.got ... --chain /tmp/chain.json --out /tmp/edited.png

The chain file is JSON: {"pieces": [text, ...], "objects": [{"phrase", "box": [x1, y1, x2, y2]
in [0, 1000), "colour"}, ...]}; a plain-text file holding the chain itself works too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from PIL import Image

from wegen_jax.config_utils import resolve_config_argv

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file[:arg]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "training run directory (its newest checkpoint, or --step)")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)")
_PROMPT = flags.DEFINE_string("prompt", None, "caption (T2I) or edit instruction (with --image)")
_IMAGE = flags.DEFINE_string("image", None, "image to edit (PNG/JPEG)")
_CHAIN = flags.DEFINE_string("chain", None, "draw from this chain (JSON or text file) instead of writing one")
_CHAIN_OUT = flags.DEFINE_string("chain_out", None, "write the chain here as JSON")
_ONLY_CHAIN = flags.DEFINE_bool("only_chain", False, "write the chain only, draw nothing")
_OUT = flags.DEFINE_string("out", None, "output PNG")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
_STEPS = flags.DEFINE_integer("num_steps", None, "diffusion steps (default: config.sampling.num_steps)")


def _read_chain(path: str):
  text = Path(path).read_text()
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return text


def main(_):
  logging.set_verbosity(logging.WARNING)
  from wegen_jax.systems.base import Request, get_system

  config = _CONFIG.value
  if config.task != "got":
    raise app.UsageError(f"--config is a {config.task!r} config; this command runs GoT (configs/got.py)")
  if _IMAGE.value and not Path(_IMAGE.value).is_file():
    raise app.UsageError(f"--image {_IMAGE.value} does not exist")
  if _CHAIN.value and not Path(_CHAIN.value).is_file():
    raise app.UsageError(f"--chain {_CHAIN.value} does not exist")
  if not (_ONLY_CHAIN.value or _OUT.value):
    raise app.UsageError("pass --out IMAGE.png (or --only_chain with --chain_out)")
  system = get_system(config).from_run(config, _WORKDIR.value, step=_STEP.value)
  images = (np.asarray(Image.open(_IMAGE.value).convert("RGB")),) if _IMAGE.value else ()
  options = {"only_chain": _ONLY_CHAIN.value}
  if _CHAIN.value:
    options["chain"] = _read_chain(_CHAIN.value)
  if _STEPS.value:
    options["num_steps"] = _STEPS.value
  response = system.generate([Request(_PROMPT.value or "", images=images, seed=_SEED.value, options=options)])[0]
  print(response.text)
  if _CHAIN_OUT.value:
    Path(_CHAIN_OUT.value).write_text(json.dumps(response.extras["chain"], indent=1))
    print(f"chain written to {_CHAIN_OUT.value}")
  if response.images:
    Image.fromarray(response.images[0]).save(_OUT.value)
    print(f"image written to {_OUT.value}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, argv=resolve_config_argv())
