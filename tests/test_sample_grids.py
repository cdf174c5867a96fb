"""The PNG grids of `python -m wegen_jax.sample` and `make demo` are readable: images at CELL px,
a header per column, the instruction written under each row, and a summary of all rows."""

import numpy as np
from PIL import Image

from wegen_jax.evaluators.grids import CELL, GAP, write_grids
from wegen_jax.systems.base import Sample


def _frame(colour) -> np.ndarray:
  return np.full((32, 32, 3), colour, np.uint8)


def test_grids_are_large_labelled_and_summarised(tmp_path):
  long_text = "move the red circle to the top left corner of the frame " * 3
  samples = [
    Sample(long_text, [_frame(10)], _frame(100), _frame(200)),
    Sample("no image this time", [_frame(10)], _frame(100), None),
  ]
  write_grids(samples, tmp_path)
  first = np.asarray(Image.open(tmp_path / "00.png"))
  assert first.shape[1] == 3 * CELL + 2 * GAP and first.shape[0] > CELL + 3 * 14  # a long instruction wraps over lines
  header, images, caption = first[:18], first[18 : 18 + CELL], first[18 + CELL :]
  assert (header < 128).any() and (caption < 128).any()  # text drawn above and below the images
  np.testing.assert_array_equal(
    images[CELL // 2, [k * (CELL + GAP) + CELL // 2 for k in range(3)]], [[10] * 3, [100] * 3, [200] * 3]
  )
  summary = Image.open(tmp_path / "summary.png")
  second = Image.open(tmp_path / "01.png")
  assert summary.height == first.shape[0] + second.height + 8
  assert (tmp_path / "instructions.txt").read_text().splitlines()[1] == "01: no image this time"
