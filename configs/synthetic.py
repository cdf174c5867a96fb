"""python -m wegen_jax.data.synthetic --out DIR --num 16 --seed 0 --config configs/synthetic.py

Writes DIR/clip_00000.{mp4,avi,mkv,webm} with ground-truth sidecars clip_00000.json (object ids, per-frame
boxes, RLE masks, states, cuts); codecs rotate over `codecs`, about 15% of clips are static and 35% have cuts.
"""

from wegen_jax.data.synthetic import default_corpus_config


def get_config(arg=None):
  c = default_corpus_config()
  if arg == "large":  # bench-sized clips
    c.size, c.num_frames = 128, 72
  return c
