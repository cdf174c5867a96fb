"""python -m wegen_jax.curation --videos DIR --out DATA_DIR --config configs/curate.py[:preset=NAME] [--label]

DIIC curation of a folder of videos into DATA_DIR/wegen_dynamics (TFDS array_record, pairs and triples) plus
DATA_DIR/curation_stats.json. Fields are documented in wegen_jax/curation/defaults.py. Presets:
  (none)     real videos: 4 fps, 256 px records, built-in identity encoder, labeller 'synthetic' for --label
  synthetic  the generator's clips (python -m wegen_jax.data.synthetic --out DIR): 64 px, 6 fps; --label uses
             the exact ground truth (frame_size=N overrides the record size, as for larger clips), e.g. `python -m wegen_jax.curation --videos /tmp/syn --out /tmp/dyn
             --config configs/curate.py:preset=synthetic --label` prints "videos seen 16, kept ..." and the failed files
  clip       identity filter with the project's CLIP image tower; set encoder.clip_dir to a local HF CLIP dir
  vlm        --label with a local transformers VLM; set labeller.hf_vlm.path
"""

from wegen_jax.config_utils import parse_arg
from wegen_jax.curation.defaults import get_config as _defaults


def get_config(arg=None):
  args = parse_arg(arg, preset="", frame_size=0)
  preset = args["preset"]
  c = _defaults()
  if preset == "synthetic":
    c.frame_size, c.analysis_size, c.sample_fps = 64, 64, 6.0
    c.select.min_side = 32
  elif preset == "clip":
    c.encoder.name = "clip"
    c.encoder.clip_dir = ""  # e.g. /data/weights/clip-vit-base-patch32 (HF layout, local)
    c.select.identity_min = 0.85
  elif preset == "vlm":
    c.labeller.name = "hf_vlm"
    c.labeller.hf_vlm.path = ""  # e.g. /data/weights/Qwen2.5-VL-3B-Instruct
  elif preset:
    raise ValueError(f"unknown preset {preset!r} (synthetic, clip, vlm)")
  if args["frame_size"]:
    c.frame_size = int(args["frame_size"])
  return c
