"""Procedural video-dynamics generator with exact ground truth (the embedded default data).

A clip is one or more scenes separated by hard cuts. Each scene has a textured background and a few shapes
(circle, square, triangle, cross, ring) with a unique colour+shape name, whose state (centre, size, angle,
colour, visibility) follows scripted events: move, rotate, grow/shrink, change colour, appear, disappear.
A static clip has no events. Everything is a pure function of the seed, so `generate_clip(seed, ...)` is
reproducible bit for bit and the ground truth describes the rendered pixels exactly (hard-edged masks).

Ground truth (`<clip>.json` next to the video): per frame the scene index and per object its visibility,
pixel box [x0, y0, x1, y1) and mask as row-major run lengths (`rle_encode`), plus the state needed by
`describe(gt, i, j)` and `caption(gt, i)`, which give the dynamics sentence between two frames and a caption
of one frame. The curation labeller (`labellers.GroundTruthLabeller`) calls exactly these two functions.

CLI: python -m wegen_jax.data.synthetic --out DIR [--num 16] [--seed 0] [--config configs/synthetic.py]
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Sequence

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
  "red": (220, 30, 30),
  "green": (30, 180, 60),
  "blue": (40, 70, 230),
  "yellow": (240, 220, 30),
  "purple": (150, 50, 200),
  "orange": (250, 140, 20),
  "cyan": (40, 210, 220),
  "white": (245, 245, 245),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
  "gray": (110, 110, 110),
  "black": (15, 15, 15),
  "navy": (20, 30, 80),
  "olive": (90, 100, 40),
  "brown": (100, 60, 40),
  "teal": (20, 90, 90),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring")
BG_TEXTURES = ("plain", "gradient", "stripes", "checker")
# Shapes whose rotation is visible; circles and rings look the same at any angle.
ROTATABLE = ("square", "triangle", "cross")
EVENT_KINDS = ("move", "rotate", "scale", "colour", "appear", "disappear")

# Codec/container pairs this FFmpeg build encodes (checked against PyAV 18.1 bundled FFmpeg).
CODECS: dict[str, tuple[str, str, str]] = {  # name -> (extension, codec, pix_fmt)
  "h264": ("mp4", "libx264", "yuv420p"),
  "mpeg4": ("avi", "mpeg4", "yuv420p"),
  "mjpeg": ("mkv", "mjpeg", "yuvj420p"),
  "vp9": ("webm", "libvpx-vp9", "yuv420p"),
  "ffv1": ("mkv", "ffv1", "yuv444p"),
}


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """Knobs of one clip; sizes in pixels, times in frames."""

  size: int = 64
  num_frames: int = 36
  fps: int = 12
  num_scenes: int = 1  # > 1 inserts hard cuts
  min_objects: int = 2
  max_objects: int = 3
  static: bool = False  # no events at all
  max_events_per_object: int = 2
  # the scene grammar's textures (the embedded demo draws from a smaller grammar: configs/wegen.py)
  bg_textures: tuple[str, ...] = BG_TEXTURES
  object_textures: tuple[str, ...] = ("solid", "striped")
  # the events an object draws from (a repeat doubles a kind's odds; rotate only for shapes that show it)
  event_kinds: tuple[str, ...] = ("move", "move", "rotate", "scale", "colour", "appear", "disappear")
  # 0: a move goes to a random place over a random span of frames. move_step > 0: it goes this far
  # (image widths) straight up, down, left or right from where the object starts; move_frames > 0:
  # it takes this many frames (1 = a jump between two frames, so no frame shows it half way).
  move_step: float = 0.0
  move_frames: int = 0

  def __post_init__(self):
    unknown = set(self.event_kinds) - set(EVENT_KINDS)
    if unknown or not self.event_kinds:
      raise ValueError(f"ClipSpec.event_kinds={self.event_kinds!r}: choose one or more of {EVENT_KINDS}")
    if not 0 <= self.move_step <= 0.35 or self.move_frames < 0:
      raise ValueError(
        f"ClipSpec.move_step={self.move_step}, move_frames={self.move_frames}: choose a step in [0, 0.35] "
        "image widths (0 = random destinations) and move_frames >= 0 (0 = random spans)"
      )


# --------------------------------------------------------------------------------------------------- state


def _scene_script(rng: np.random.Generator, spec: ClipSpec, n_frames: int) -> dict[str, Any]:
  """Samples one scene: background and objects with their event lists."""
  bg_name = str(rng.choice(list(BACKGROUNDS)))
  scene = {
    "background": bg_name,
    "texture": str(rng.choice(list(spec.bg_textures))),
    "bg_seed": int(rng.integers(1 << 30)),
    "objects": [],
  }
  n_obj = int(rng.integers(spec.min_objects, spec.max_objects + 1))
  used: set[tuple[str, str]] = set()
  colours = list(COLOURS)
  for _ in range(n_obj):
    while True:  # unique colour+shape so every sentence names one object
      key = (str(rng.choice(colours)), str(rng.choice(SHAPES)))
      if key not in used:
        used.add(key)
        break
    size = float(rng.uniform(0.08, 0.14))
    obj = {
      "colour": key[0],
      "shape": key[1],
      "texture": str(rng.choice(list(spec.object_textures))),
      "x": float(rng.uniform(0.2, 0.8)),
      "y": float(rng.uniform(0.2, 0.8)),
      "size": size,
      "angle": float(rng.uniform(0, 90)),
      "events": [],
    }
    if not spec.static:
      kinds = list(spec.event_kinds)
      if obj["shape"] not in ROTATABLE:
        kinds = [k for k in kinds if k != "rotate"] or kinds
      for _ in range(int(rng.integers(1, spec.max_events_per_object + 1))):
        kind = str(rng.choice(kinds))
        t0 = int(rng.integers(0, max(1, n_frames // 2)))
        t1 = int(min(n_frames - 1, t0 + rng.integers(max(2, n_frames // 3), max(3, n_frames))))
        if spec.move_frames and kind == "move":
          t1 = min(n_frames - 1, t0 + spec.move_frames)
        ev: dict[str, Any] = {"kind": kind, "t0": t0, "t1": max(t1, t0 + 1)}
        if kind == "move" and spec.move_step:
          ev["x"], ev["y"] = _step(rng, obj["x"], obj["y"], spec.move_step)
        elif kind == "move":
          ev["x"], ev["y"] = float(rng.uniform(0.18, 0.82)), float(rng.uniform(0.18, 0.82))
        elif kind == "rotate":
          ev["delta"] = float(rng.choice([-1, 1]) * rng.uniform(20, 40))
        elif kind == "scale":
          ev["factor"] = float(rng.choice([0.6, 1.6]))
        elif kind == "colour":
          ev["to"] = str(rng.choice([c for c in colours if c != obj["colour"]]))
        obj["events"].append(ev)
      # appear/disappear are exclusive; keep only the first so visibility stays one interval
      vis = [e for e in obj["events"] if e["kind"] in ("appear", "disappear")]
      obj["events"] = [e for e in obj["events"] if e["kind"] not in ("appear", "disappear")] + vis[:1]
    scene["objects"].append(obj)
  return scene


def _step(rng: np.random.Generator, x: float, y: float, step: float) -> tuple[float, float]:
  """A point `step` away from (x, y) straight up, down, left or right, inside [0.1, 0.9] (objects
  start in [0.2, 0.8], so with step <= 0.35 one of the four ways always fits)."""
  ways = [(step, 0.0), (-step, 0.0), (0.0, step), (0.0, -step)]
  inside = [(dx, dy) for dx, dy in ways if 0.1 <= x + dx <= 0.9 and 0.1 <= y + dy <= 0.9]
  dx, dy = inside[int(rng.integers(len(inside)))]
  return x + dx, y + dy


def _object_state(obj: dict[str, Any], t: int) -> dict[str, Any]:
  """State of one object at frame t (relative to its scene start)."""
  x, y, size, angle, colour = obj["x"], obj["y"], obj["size"], obj["angle"], obj["colour"]
  rgb = np.array(COLOURS[colour], np.float64)
  visible, fade_to = True, None
  for ev in obj["events"]:
    a = float(np.clip((t - ev["t0"]) / (ev["t1"] - ev["t0"]), 0.0, 1.0))
    if ev["kind"] == "move":
      x, y = x + a * (ev["x"] - x), y + a * (ev["y"] - y)
    elif ev["kind"] == "rotate":
      angle = angle + a * ev["delta"]
    elif ev["kind"] == "scale":
      size = size * (1 + a * (ev["factor"] - 1))
    elif ev["kind"] == "colour":
      rgb = (1 - a) * rgb + a * np.array(COLOURS[ev["to"]], np.float64)
      colour = ev["to"] if a >= 0.5 else colour  # the name flips half way through the fade
      fade_to = ev["to"]
    elif ev["kind"] == "appear":
      visible = t >= ev["t0"]
    elif ev["kind"] == "disappear":
      visible = t < ev["t0"]
  return {
    "x": x,
    "y": y,
    "size": size,
    "angle": angle,
    "colour": colour,
    "rgb": [int(round(c)) for c in rgb],
    "visible": visible,
    "fade_to": fade_to,
  }


# ------------------------------------------------------------------------------------------------- render


def _background(scene: dict[str, Any], n: int) -> np.ndarray:
  base = np.array(BACKGROUNDS[scene["background"]], np.float32)
  yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
  tex = scene["texture"]
  if tex == "gradient":
    shade = 0.6 + 0.8 * xx
  elif tex == "stripes":
    period = 4 + scene["bg_seed"] % 6
    shade = np.where((np.arange(n)[None, :] // period) % 2 == 0, 1.0, 0.7) * np.ones((n, 1))
  elif tex == "checker":
    period = 6 + scene["bg_seed"] % 6
    iy, ix = np.mgrid[0:n, 0:n] // period
    shade = np.where((iy + ix) % 2 == 0, 1.0, 0.75)
  else:
    shade = np.ones((n, n))
  return np.clip(base[None, None, :] * shade[..., None], 0, 255).astype(np.float32)


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Inside test in the object's unit frame (radius 1)."""
  r2 = u * u + v * v
  if shape == "circle":
    return r2 <= 1.0
  if shape == "ring":
    return (r2 <= 1.0) & (r2 >= 0.36)
  if shape == "square":
    return np.maximum(np.abs(u), np.abs(v)) <= 0.8
  if shape == "cross":
    return (np.minimum(np.abs(u), np.abs(v)) <= 0.3) & (np.maximum(np.abs(u), np.abs(v)) <= 1.0)
  if shape == "triangle":  # equilateral, inscribed in the unit circle, apex up (y points down)
    inside = v <= 0.5
    for nx in (math.sqrt(3) / 2, -math.sqrt(3) / 2):  # outward normals of the two slanted edges
      inside &= (u * nx - 0.5 * v) <= 0.5
    return inside
  raise ValueError(f"unknown shape {shape!r}")


def _object_mask(obj: dict[str, Any], st: dict[str, Any], n: int) -> tuple[np.ndarray, np.ndarray]:
  """Boolean mask and per-pixel shade (texture) of one object; y points down, +angle is clockwise."""
  c = (np.arange(n, dtype=np.float64) + 0.5) / n
  dx, dy = c[None, :] - st["x"], c[:, None] - st["y"]
  th = math.radians(st["angle"])
  u = (math.cos(th) * dx + math.sin(th) * dy) / st["size"]
  v = (-math.sin(th) * dx + math.cos(th) * dy) / st["size"]
  mask = _shape_mask(obj["shape"], u, v)
  shade = np.where((np.floor((u + 2) * 2.5) % 2 == 1), 0.55, 1.0) if obj["texture"] == "striped" else 1.0
  return mask, np.broadcast_to(shade, mask.shape)


def rle_encode(mask: np.ndarray) -> list[int]:
  """Row-major run lengths, starting with a (possibly empty) run of zeros."""
  flat = mask.reshape(-1).astype(bool)
  change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
  runs = np.diff(np.concatenate([[0], change, [flat.size]]))
  return ([0] if flat[0] else []) + [int(r) for r in runs]


def rle_decode(counts: Sequence[int], shape: Sequence[int]) -> np.ndarray:
  vals = np.arange(len(counts)) % 2 == 1
  return np.repeat(vals, counts)[: int(np.prod(shape))].reshape(shape)


def _cut_points(rng: np.random.Generator, T: int, num_scenes: int, min_len: int) -> list[int]:
  """num_scenes - 1 cut frames so that every scene has at least min_len frames (fewer scenes if T is short)."""
  n_cuts = max(0, min(num_scenes - 1, T // min_len - 1))
  slack = T - min_len * (n_cuts + 1)
  extra = np.sort(rng.integers(0, slack + 1, size=n_cuts))  # spread the slack over the scenes
  return [int(min_len * (k + 1) + extra[k]) for k in range(n_cuts)]


def generate_clip(seed: int, spec: ClipSpec = ClipSpec()) -> tuple[np.ndarray, dict[str, Any]]:
  """Returns uint8 frames [T, S, S, 3] and the ground-truth dict (JSON-serialisable)."""
  rng = np.random.default_rng(seed)
  n, T = spec.size, spec.num_frames
  # scene boundaries at random interior points, each scene at least 6 frames
  cuts = _cut_points(rng, T, spec.num_scenes, min_len=6)
  bounds = [0] + [int(c) for c in cuts] + [T]
  scenes = [_scene_script(rng, spec, bounds[k + 1] - bounds[k]) for k in range(len(bounds) - 1)]
  frames = np.zeros((T, n, n, 3), np.uint8)
  gt_frames = []
  for k, scene in enumerate(scenes):
    bg = _background(scene, n)
    for t in range(bounds[k], bounds[k + 1]):
      img = bg.copy()
      objs = []
      for j, obj in enumerate(scene["objects"]):
        st = _object_state(obj, t - bounds[k])
        rec = {"id": f"s{k}o{j}", "visible": False, "state": st}
        if st["visible"]:
          mask, shade = _object_mask(obj, st, n)
          img[mask] = np.asarray(st["rgb"], np.float32)[None, :] * shade[mask][:, None]
          rec["mask"] = mask
        objs.append(rec)
      # occlusion: later objects paint over earlier ones, so visible masks are what is left on top
      covered = np.zeros((n, n), bool)
      for rec in reversed(objs):
        if "mask" in rec:
          m = rec.pop("mask") & ~covered
          covered |= m
          if m.any():
            ys, xs = np.nonzero(m)
            rec.update(
              visible=True, box=[int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1], rle=rle_encode(m)
            )
      frames[t] = np.clip(img, 0, 255).astype(np.uint8)
      gt_frames.append({"scene": k, "objects": objs})
  objects = {
    f"s{k}o{j}": {"scene": k, "shape": o["shape"], "texture": o["texture"], "colour": o["colour"]}
    for k, sc in enumerate(scenes)
    for j, o in enumerate(sc["objects"])
  }
  gt = {
    "seed": int(seed),
    "spec": dataclasses.asdict(spec),
    "size": [n, n],
    "fps": spec.fps,
    "num_frames": T,
    "static": spec.static,
    "cuts": bounds[1:-1],
    "scenes": scenes,
    "objects": objects,
    "frames": gt_frames,
  }
  return frames, gt


# --------------------------------------------------------------------------------------------- language


def region_name(x: float, y: float) -> str:
  row = "top" if y < 1 / 3 else ("bottom" if y > 2 / 3 else "")
  col = "left" if x < 1 / 3 else ("right" if x > 2 / 3 else "")
  return f"{row} {col}".strip() or "centre"


REGION_NAMES = tuple(sorted({region_name(x, y) for x in (0, 0.5, 1) for y in (0, 0.5, 1)}))  # the nine places


def _direction(dx: float, dy: float) -> str:
  parts = []
  if abs(dy) > 0.5 * abs(dx):
    parts.append("up" if dy < 0 else "down")
  if abs(dx) > 0.5 * abs(dy):
    parts.append("left" if dx < 0 else "right")
  return " and ".join(parts)


def _name(gt: dict[str, Any], oid: str, st: dict[str, Any]) -> str:
  return f"{st['colour']} {gt['objects'][oid]['shape']}"


def describe(gt: dict[str, Any], i: int, j: int, min_move: float = 0.06) -> str:
  """Dynamics sentence(s) from frame i to frame j of the same scene, e.g. 'the red circle moves up and
  left to the top left.' Objects that did not change are not mentioned (they stay the same); changes
  below the main thresholds are called slight, so every visible change is named."""
  fi, fj = gt["frames"][i], gt["frames"][j]
  if fi["scene"] != fj["scene"]:
    raise ValueError(f"frames {i} and {j} are in different scenes (a cut lies between them)")
  out = []
  for a, b in zip(fi["objects"], fj["objects"]):
    oid, sa, sb = a["id"], a["state"], b["state"]
    if not a["visible"] and not b["visible"]:
      continue
    if not a["visible"]:
      out.append(f"a {_name(gt, oid, sb)} appears at the {region_name(sb['x'], sb['y'])}")
      continue
    name = f"the {_name(gt, oid, sa)}"
    if not b["visible"]:
      out.append(f"{name} disappears")
      continue
    dx, dy = sb["x"] - sa["x"], sb["y"] - sa["y"]
    dist = math.hypot(dx, dy)
    if dist >= min_move:
      out.append(f"{name} moves {_direction(dx, dy)} to the {region_name(sb['x'], sb['y'])}")
    elif dist >= min_move / 8:  # about half a pixel at 64 px: still visible at the edges
      out.append(f"{name} moves slightly {_direction(dx, dy)}")
    shape, turn = gt["objects"][oid]["shape"], sb["angle"] - sa["angle"]
    if shape in ROTATABLE and abs(turn) >= 3:
      sense = "clockwise" if turn > 0 else "counterclockwise"
      out.append(f"{name} rotates {sense}" if abs(turn) >= 10 else f"{name} rotates slightly {sense}")
    ratio = sb["size"] / sa["size"]
    if max(ratio, 1 / ratio) >= 1.04:
      word = "grows" if ratio > 1 else "shrinks"
      out.append(f"{name} {word}" if max(ratio, 1 / ratio) >= 1.15 else f"{name} {word} slightly")
    if sb["colour"] != sa["colour"]:
      out.append(f"{name} turns {sb['colour']}")
    elif np.abs(np.subtract(sb["rgb"], sa["rgb"])).mean() >= 12 and sb.get("fade_to"):
      out.append(f"{name} starts turning {sb['fade_to']}")
  if not out:
    return "nothing changes."
  return "; ".join(out) + "."


def caption_parts(gt: dict[str, Any], i: int) -> tuple[list[tuple[dict, str]], str]:
  """Frame i's visible object records with their caption phrases ('a striped red circle at the
  top left'), and the background phrase ('a gray background'): what `caption` joins."""
  fr = gt["frames"][i]
  scene = gt["scenes"][fr["scene"]]
  objects = []
  for rec in fr["objects"]:
    if rec["visible"]:
      st, meta = rec["state"], gt["objects"][rec["id"]]
      tex = "striped " if meta["texture"] == "striped" else ""
      objects.append((rec, f"a {tex}{st['colour']} {meta['shape']} at the {region_name(st['x'], st['y'])}"))
  background = (
    f"a {'' if scene.get('texture', 'plain') == 'plain' else scene['texture'] + ' '}{scene['background']} background"
  )
  return objects, background


def caption_separators(n: int) -> list[str]:
  """The text between a caption's n object phrases: ', ' and a final ' and '."""
  return [", "] * max(n - 2, 0) + [" and "] * (n >= 2)


def caption(gt: dict[str, Any], i: int) -> str:
  """Caption of frame i: the visible objects, where they are, and the background."""
  objects, background = caption_parts(gt, i)
  if not objects:
    return f"an empty scene with {background}."
  phrases = [phrase for _, phrase in objects]
  joined = phrases[0] + "".join(sep + p for sep, p in zip(caption_separators(len(phrases)), phrases[1:]))
  return f"{joined} on {background}."


_OBJECT_IN_CAPTION = re.compile(r"\ba (?:striped )?(\w+) (" + "|".join(SHAPES) + r") at the ")


def short_prompt(text: str, max_words: int = 8) -> str:
  """The vague prompt a user might type for a detailed caption, e.g. 'a red circle and a blue
  square.' for `caption(gt, i)`'s sentence (object names only: no places, textures or background).
  Other captions keep their first clause, at most `max_words` words. Prompt self-rewriting (PSR)
  trains short prompt -> detailed caption + image on these pairs."""
  names = [f"a {colour} {shape}" for colour, shape in _OBJECT_IN_CAPTION.findall(text)]
  if names:
    return (names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]) + "."
  first = re.split(r"[,.;]", text.strip(), maxsplit=1)[0].split()
  return " ".join(first[:max_words]) + "." if first else ""


# ---------------------------------------------------------------------------------------------- writing


def write_clip(path_stem: str, frames: np.ndarray, gt: dict[str, Any], codec: str = "h264") -> str:
  """Writes `<stem>.<ext>` with PyAV and the ground truth to `<stem>.json`; returns the video path."""
  from wegen_jax.data import video_io  # local: keeps this module importable without PyAV

  ext, codec_name, pix_fmt = CODECS[codec]
  path = f"{path_stem}.{ext}"
  video_io.write_video(path, frames, fps=gt["fps"], codec=codec_name, pix_fmt=pix_fmt)
  with open(f"{path_stem}.json", "w") as f:
    json.dump(dict(gt, video=os.path.basename(path), codec=codec), f)
  return path


def clip_plan(index: int, seed: int, cfg: Any) -> tuple[int, ClipSpec, str]:
  """Deterministic plan of clip `index` in a corpus: its seed, spec and codec (round-robin)."""
  rng = np.random.default_rng([seed, index])
  static = rng.random() < cfg.static_fraction
  scenes = 1 if rng.random() >= cfg.cut_fraction else int(rng.integers(2, cfg.max_scenes + 1))
  spec = ClipSpec(
    size=cfg.size,
    num_frames=cfg.num_frames,
    fps=cfg.fps,
    num_scenes=scenes,
    min_objects=cfg.min_objects,
    max_objects=cfg.max_objects,
    static=static,
  )
  return int(rng.integers(1 << 31)), spec, cfg.codecs[index % len(cfg.codecs)]


def write_corpus(out_dir: str, num: int, seed: int, cfg: Any) -> list[str]:
  """Writes `num` clips `clip_00000.<ext>` + `.json` into out_dir; returns the video paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for i in range(num):
    clip_seed, spec, codec = clip_plan(i, seed, cfg)
    frames, gt = generate_clip(clip_seed, spec)
    paths.append(write_clip(os.path.join(out_dir, f"clip_{i:05d}"), frames, gt, codec))
  return paths


def default_corpus_config():
  import ml_collections

  return ml_collections.ConfigDict(
    dict(
      size=64,
      num_frames=36,
      fps=12,
      min_objects=2,
      max_objects=3,
      static_fraction=0.15,
      cut_fraction=0.35,
      max_scenes=3,
      codecs=["h264", "mpeg4", "mjpeg", "vp9"],
    )
  )


def main(argv: Sequence[str] | None = None) -> None:
  import argparse

  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--num", type=int, default=16)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--config", default=None, help="configs/synthetic.py (optional)")
  args = p.parse_args(argv)
  if args.config:
    from wegen_jax.config_utils import load_config

    cfg = load_config(args.config)
  else:
    cfg = default_corpus_config()
  paths = write_corpus(args.out, args.num, args.seed, cfg)
  print(f"wrote {len(paths)} clips with ground truth to {args.out}")


if __name__ == "__main__":
  main()
