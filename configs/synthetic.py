"""python -m wegen_jax.data.synthetic --out DIR --num 16 --seed 0 --config configs/synthetic.py[:preset=large]

Writes DIR/clip_00000.{mp4,avi,mkv,webm} with ground-truth sidecars clip_00000.json (object ids, per-frame
boxes, RLE masks, states, cuts); codecs rotate over `codecs`, about 15% of clips are static and 35% have cuts.
"""

from wegen_jax.config_utils import parse_arg
from wegen_jax.data.synthetic import default_corpus_config


def get_config(arg=None):
  preset = parse_arg(arg, preset="")["preset"]
  c = default_corpus_config()
  if preset == "large":  # bench-sized clips
    c.size, c.num_frames = 128, 72
  elif preset:
    raise ValueError(f"unknown preset {preset!r} (large)")
  return c
