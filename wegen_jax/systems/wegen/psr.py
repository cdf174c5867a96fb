"""Text-to-image and prompt self-rewriting (PSR) turns from captioned records, and PSR's measures.

A record's first frame A can be drawn from text instead of being given (`data.first_turn` weights):
  image    A is the user's input image: `[INST] <A> d1 [/INST] <B>` (plain editing)
  caption  the detailed caption -> A: `[INST] {caption} [/INST] <A>` (text-to-image)
  short    the vague prompt -> A directly (what PSR off asks for)
  psr      `PSR_PREFIX + short` -> the detailed caption, then A: the model learns to write a
           prompt before drawing, so sampled rewrites of one short prompt give different pictures
The dynamics turns follow and edit A from the history. The kind is a fixed function of the
record, so every process and a resumed run agree on it.
"""

from __future__ import annotations

import itertools
import re
import zlib
from typing import Sequence

import numpy as np

from wegen_jax.data.synthetic import COLOURS, SHAPES, short_prompt
from wegen_jax.systems.wegen.sequences import Turn

FIRST_TURNS = ("image", "caption", "short", "psr")
PSR_PREFIX = "write a detailed prompt, then draw it: "


def psr_text(prompt: str) -> str:
  """The user text of a PSR request: the model answers with a detailed prompt and its image."""
  return PSR_PREFIX + prompt


def first_turn_kind(record: dict, weights: dict) -> str:
  """One of FIRST_TURNS, drawn with `weights` from a hash of the record's video and frames."""
  unknown = set(weights) - set(FIRST_TURNS)
  if unknown:
    raise ValueError(f"data.first_turn has unknown kinds {sorted(unknown)}; choose from {FIRST_TURNS}")
  total = sum(float(weights.get(k, 0.0)) for k in FIRST_TURNS)
  if total <= 0:
    return "image"
  key = f"{record.get('video_id', '')}/{[int(i) for i in record.get('frame_indices', ())]}"
  u = zlib.crc32(key.encode()) / 2**32 * total
  for kind in FIRST_TURNS:
    u -= float(weights.get(kind, 0.0))
    if u < 0:
      return kind
  return FIRST_TURNS[-1]


def first_turn(record: dict, kind: str) -> Turn | None:
  """The turn that draws frame A for `kind` (None: A is an input image, also for uncaptioned records)."""
  caption = record.get("caption", "")
  if kind == "image" or not caption:
    return None
  if kind == "caption":
    return Turn(user_text=caption, response_images=1)
  if kind == "short":
    return Turn(user_text=short_prompt(caption), response_images=1)
  if kind == "psr":
    return Turn(user_text=psr_text(short_prompt(caption)), response_text=caption, response_images=1)
  raise ValueError(f"unknown first turn {kind!r}; choose from {FIRST_TURNS}")


# ----------------------------------------------------------------------------------------- measures


def mean_pairwise_distance(images: Sequence[np.ndarray]) -> float:
  """Diversity of N images of one prompt: mean absolute pixel difference (/255) over all pairs."""
  pics = [np.asarray(im, np.float32) for im in images]
  pairs = list(itertools.combinations(pics, 2))
  return float(np.mean([np.abs(a - b).mean() for a, b in pairs])) if pairs else 0.0


_NAME = re.compile(r"\b(" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")\b")


def named_objects(text: str) -> set[tuple[str, str]]:
  """The (colour, shape) names in a synthetic-world text."""
  return set(_NAME.findall(text))


def text_faithful(rewrite: str, prompt: str) -> bool:
  """A rewrite keeps the short prompt when it names every object the prompt names."""
  return named_objects(prompt) <= named_objects(rewrite)


def colours_present(image: np.ndarray, prompt: str, tolerance: float = 60.0, min_fraction: float = 0.01) -> float:
  """Fraction of the prompt's object colours that cover at least `min_fraction` of the image
  (pixels within `tolerance` of the colour's RGB): a coarse image faithfulness for the synthetic world."""
  colours = sorted({c for c, _ in named_objects(prompt)})
  if not colours:
    return 1.0
  pixels = np.asarray(image, np.float32).reshape(-1, 3)
  hits = [np.mean(np.linalg.norm(pixels - np.asarray(COLOURS[c]), axis=1) < tolerance) >= min_fraction for c in colours]
  return float(np.mean(hits))


def measure_psr(system, prompts: Sequence[str], num_samples: int = 4, seed: int = 0) -> dict:
  """PSR on against off for each short prompt, `num_samples` images each (off draws the prompt
  directly, `force_image`): the images' diversity (mean pairwise distance /255), how many rewrites
  are distinct and name every object of the prompt, and the share of the prompt's colours found
  in the images (a coarse image faithfulness)."""
  from wegen_jax.systems.base import Request

  rows = []
  for i, prompt in enumerate(prompts):
    ask = lambda **o: system.generate([Request(prompt, num_samples=num_samples, seed=seed + i, options=o)])[0]
    on, off = ask(psr=True), ask(psr=False, force_image=True)
    rewrites = on.extras.get("prompts", [])
    rows.append(
      dict(
        diversity_on=mean_pairwise_distance(on.images),
        diversity_off=mean_pairwise_distance(off.images),
        rewrites_distinct=len(set(rewrites)) / max(len(rewrites), 1),
        rewrites_faithful=float(np.mean([text_faithful(r, prompt) for r in rewrites])) if rewrites else 0.0,
        colours_on=float(np.mean([colours_present(im, prompt) for im in on.images])) if on.images else 0.0,
        colours_off=float(np.mean([colours_present(im, prompt) for im in off.images])) if off.images else 0.0,
      )
    )
  out = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]} if rows else {}
  return dict(out, prompts=len(rows), num_samples=num_samples)
