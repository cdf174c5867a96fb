"""Generated evaluation images kept as PNGs in RUN/eval/<step>/<evaluator>/: people can look at
them, and a killed evaluation reuses those already written (nothing is generated twice)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image


def cached_images(
  out_dir: str | Path | None, count: int, generate_one: Callable[[int], np.ndarray]
) -> list[np.ndarray]:
  """Image i (uint8 [H, W, 3]) from out_dir/NNN.png when a complete one is there, else
  generate_one(i), written before the next one is made. out_dir None: no files."""
  if out_dir is None:
    return [generate_one(i) for i in range(count)]
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  images = []
  for i in range(count):
    path = out_dir / f"{i:03d}.png"
    try:
      with Image.open(path) as im:
        images.append(np.asarray(im.convert("RGB")))
      continue
    except FileNotFoundError:
      pass
    except OSError:  # torn or foreign file: make it again
      path.unlink()
    image = np.asarray(generate_one(i), np.uint8)
    tmp = path.with_suffix(".png.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    tmp.replace(path)  # atomic: a killed run never leaves a half-written PNG under the real name
    images.append(image)
  return images
