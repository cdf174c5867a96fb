"""`python -m wegen_jax.sample --config configs/wegen.py:size=tiny,stage=2 --workdir RUN [--step N] [--num 8]`

Loads a training run (its newest checkpoint, or --step) through the system's inference
interface, continues `--num` held-out validation examples and writes PNG grids
(inputs | target | generated, the instruction under each row) and summary.png to RUN/samples/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from PIL import Image, ImageDraw

from wegen_jax.config_utils import resolve_config_argv

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file[:arg]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "training run directory")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)")
_NUM = flags.DEFINE_integer("num", 8, "validation examples to continue")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")


CELL = 192  # pixels per image in the grids (tiny frames are 32-64 px: upscaled, nearest)
_HEADER, _LINE, GAP = 18, 14, 4  # header and text line heights, space between columns


def _cell(img: np.ndarray | None, like: np.ndarray) -> Image.Image:
  img = np.zeros_like(like) if img is None else img
  return Image.fromarray(np.asarray(img, np.uint8)).resize((CELL, CELL), Image.NEAREST)


def _wrapped(text: str, width_px: int) -> list[str]:
  per_line = max(8, width_px // 7)  # PIL's default bitmap font: ~6-7 px per character
  words, lines, line = text.split(), [], ""
  for w in words:
    if line and len(line) + 1 + len(w) > per_line:
      lines.append(line)
      line = w
    else:
      line = f"{line} {w}".strip()
  return lines + ([line] if line else [])


def sample_row(sample) -> Image.Image:
  """One sample as a readable row: a header naming each column, the images at CELL px, and
  the instruction written underneath."""
  like = sample.inputs[0]
  columns = [(f"input {k + 1}" if len(sample.inputs) > 1 else "input", x) for k, x in enumerate(sample.inputs)]
  columns += [("target", sample.target), ("generated", sample.generated)]
  width = CELL * len(columns) + GAP * (len(columns) - 1)
  lines = _wrapped(sample.text or "", width - 8)
  row = Image.new("RGB", (width, _HEADER + CELL + 6 + _LINE * max(len(lines), 1)), "white")
  draw = ImageDraw.Draw(row)
  for k, (name, img) in enumerate(columns):
    draw.text((k * (CELL + GAP) + 4, 3), name if img is not None else f"{name} (none)", fill="black")
    row.paste(_cell(img, like), (k * (CELL + GAP), _HEADER))
  for n, line in enumerate(lines):
    draw.text((4, _HEADER + CELL + 3 + n * _LINE), line, fill="black")
  return row


def write_grids(samples: Sequence, out: Path) -> None:
  """One PNG per sample (inputs | target | generated, the instruction under it), summary.png with
  every sample as a row, and instructions.txt."""
  out.mkdir(parents=True, exist_ok=True)
  rows = [sample_row(s) for s in samples]
  for i, row in enumerate(rows):
    row.save(out / f"{i:02d}.png")
  if rows:
    summary = Image.new("RGB", (max(r.width for r in rows), sum(r.height + 4 for r in rows)), (200, 200, 200))
    y = 0
    for row in rows:
      summary.paste(row, (0, y))
      y += row.height + 4
    summary.save(out / "summary.png")
  (out / "instructions.txt").write_text("\n".join(f"{i:02d}: {s.text}" for i, s in enumerate(samples)) + "\n")


def main(_):
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  from wegen_jax.systems.base import get_system

  config = _CONFIG.value
  system = get_system(config).from_run(config, _WORKDIR.value, step=_STEP.value)
  samples = system.validation_samples(_NUM.value, _SEED.value)
  out = Path(_WORKDIR.value) / "samples"
  write_grids(samples, out)
  for i, s in enumerate(samples):
    print(f"{i:02d}: {s.text!r} -> {'an image' if s.generated is not None else 'no image'}")
  print(f"step {system.step}: wrote {len(samples)} grids to {out}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, argv=resolve_config_argv())
