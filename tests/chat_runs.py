"""A tiny random WeGen saved as a run directory, for the chat and web UI tests."""

from pathlib import Path

import numpy as np
from PIL import Image

from wegen_batches import random_model, tiny_config


def tiny_run(root: Path) -> Path:
  """RUN/config.json + RUN/checkpoints/0 of a random tiny WeGen (short PSR rewrites and answers)."""
  from wegen_jax.systems.runs import save_weights_run
  from wegen_jax.systems.wegen import WeGenConfig

  config = tiny_config(stage=2)
  config.sampling.update(psr_max_tokens=12, max_new_tokens=72)
  save_weights_run(random_model(WeGenConfig.from_dict(config.model)), config, root)
  return root


def write_png(path: Path, size=(24, 24), colour=(200, 30, 30)) -> Path:
  img = np.zeros(size[::-1] + (3,), np.uint8)
  img[4:-4, 4:-4] = colour
  Image.fromarray(img).save(path)
  return path
