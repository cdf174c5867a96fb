"""Pair/triple selection inside shots: candidates -> quality -> motion band -> identity -> dedupe -> cap.

Candidates are (t, t+g, ..., t+(K-1)g) over the sampled frames of one shot, for every gap g in cfg.gaps and
start t on a cfg.start_stride grid, so no tuple crosses a detected cut. Every step of a tuple must pass:
  quality   every frame sharp enough (Laplacian variance) and not blank (contrast); source not too small
  motion    changed-pixel share within [motion_min, motion_max]: not static, not a cut-like jump
  identity  feature cosine of consecutive frames and of first/last >= identity_min (same subject/scene)
  duplicate not a near copy of a tuple already kept from this video
and at most cfg.max_per_shot tuples of each size are kept per shot, drawn with the video's seeded rng.
"""

from __future__ import annotations

import collections

import numpy as np

from wegen_jax.curation import filters

STAGES = ("candidates", "quality", "motion", "identity", "duplicate", "cap")


def select(
  grey: np.ndarray,
  feats: np.ndarray,
  shots: list[tuple[int, int]],
  source_short_side: int,
  cfg,
  rng: np.random.Generator,
) -> tuple[list[tuple[int, ...]], dict[str, dict[str, int]]]:
  """Returns kept tuples of sampled-frame indices and, per tuple size, how many survive each stage."""
  good = (filters.sharpness(grey) >= cfg.min_sharpness) & (filters.contrast(grey) >= cfg.min_contrast)
  memo: dict[tuple[str, int, int], float] = {}  # pairs recur across gaps, pairs and triples

  def moved(a: int, b: int) -> float:
    if ("m", a, b) not in memo:
      memo["m", a, b] = filters.motion(grey[a], grey[b], cfg.motion_tau)
    return memo["m", a, b]

  def same(a: int, b: int) -> bool:
    if ("d", a, b) not in memo:
      memo["d", a, b] = filters.near_duplicate(grey[a], grey[b], cfg.duplicate_threshold)
    return memo["d", a, b]

  size_ok = source_short_side >= cfg.min_side
  funnel: dict[str, collections.Counter] = {}
  kept_all: list[tuple[int, ...]] = []
  for k in cfg.tuple_sizes:
    count = funnel.setdefault(f"k{k}", collections.Counter({s: 0 for s in STAGES}))
    kept: list[tuple[int, ...]] = []
    for s, e in shots:
      cands = [
        tuple(t + j * g for j in range(k)) for g in cfg.gaps for t in range(s, e - (k - 1) * g, cfg.start_stride)
      ]
      cands = [cands[i] for i in rng.permutation(len(cands))]  # seeded order for dedupe and the cap
      count["candidates"] += len(cands)
      shot_kept = []
      for c in cands:
        if not (size_ok and all(good[t] for t in c)):
          continue
        count["quality"] += 1
        steps = list(zip(c[:-1], c[1:]))
        if not all(cfg.motion_min <= moved(a, b) <= cfg.motion_max for a, b in steps):
          continue
        count["motion"] += 1
        if not all(filters.cosine(feats[a], feats[b]) >= cfg.identity_min for a, b in steps + [(c[0], c[-1])]):
          continue
        count["identity"] += 1
        if any(all(same(x, y) for x, y in zip(c, o)) for o in kept + shot_kept):
          continue
        count["duplicate"] += 1
        if len(shot_kept) >= cfg.max_per_shot:
          continue
        count["cap"] += 1
        shot_kept.append(c)
      kept.extend(sorted(shot_kept))
    kept_all.extend(kept)
  return kept_all, {k: dict(v) for k, v in funnel.items()}
