"""Readable PNG grids of generated samples: one row per sample (inputs | target | generated,
a header over each column, the instruction underneath) and summary.png with every row."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

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
