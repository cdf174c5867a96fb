"""Default curation config (what `python -m wegen_jax.curation` uses without --config).

configs/curate.py starts from this and adds presets; every field is explained here once.
"""

import os

import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.seed = 0  # per-video rng = f(seed, video id): independent of workers and hosts
  c.workers = max(1, min(8, os.cpu_count() or 1))  # processes (1 = in-process)
  c.progress = True
  c.ignore_extensions = (".json", ".txt", ".md", ".csv", ".tmp", ".pkl", ".npz")  # sidecars, notes, results
  # decoding
  c.sample_fps = 4.0  # frames kept per second of video (0 = every frame)
  c.frame_size = 256  # records hold size x size centre crops
  c.analysis_size = 64  # colour/grey thumbnails for shots, motion, quality, built-in features
  c.max_pixels = 7680 * 4320  # larger sources are skipped as "enormous"
  c.chunk_frames = 256  # sampled frames held in memory at once (256 x 256^2 x 3 = 50 MB); tuples
  # do not span chunk borders, shots do
  c.max_frames_per_video = 100_000  # sampled frames; anything longer is cut off there
  c.min_frames = 3  # fewer sampled frames: skipped as too short
  c.min_decoded_fraction = 0.9  # decoded < this share of the header's frame count: truncated file
  # shot boundaries (shots.py)
  c.shots = ml_collections.ConfigDict(dict(hist_bins=8, hist_threshold=0.5, pixel_tau=0.1, pixel_threshold=0.7))
  # identity-consistency encoder (encoders.py): thumb_hist (built in) or clip (needs clip_dir)
  c.encoder = ml_collections.ConfigDict(
    dict(name="thumb_hist", bins=4, thumb=8, clip_dir="", image_size=224, batch_size=32)
  )
  # pair/triple selection (select.py)
  c.select = ml_collections.ConfigDict(
    dict(
      tuple_sizes=(2, 3),  # pairs A d1 B and multi-step triples A d1 B d2 C
      gaps=(1, 2, 4),  # steps between the frames of a tuple, in sampled frames
      start_stride=1,
      min_side=64,  # source short side in pixels
      min_sharpness=20.0,  # Laplacian variance (grey 0..255) of the analysis thumbnail
      min_contrast=4.0,  # grey std: blank frames fail
      motion_tau=0.1,  # grey change that counts a pixel as changed
      motion_min=0.004,  # changed-pixel share: below = static
      motion_max=0.4,  # above = cut-like jump or camera whip
      identity_min=0.8,  # cosine of encoder features between frames of one tuple
      duplicate_threshold=0.004,  # mean grey abs diff under which two frames are the same picture
      max_per_shot=8,  # per tuple size
    )
  )
  c.validation_fraction = 0.1  # share of videos (by id hash) in the validation split
  # labellers (labellers.py); the selection pass never labels, --label does
  c.labeller = ml_collections.ConfigDict(
    dict(
      name="synthetic",
      synthetic=dict(with_boxes=True),
      hf_vlm=dict(
        path="",
        device="cpu",
        max_new_tokens=64,
        caption_prompt="Describe this image in one sentence.",
        dynamics_prompt=(
          "The two images are consecutive frames of a video. In one sentence, say what "
          "changed from the first to the second image (what moved where, appeared, "
          "disappeared or changed colour); do not describe what stayed the same."
        ),
      ),
    )
  )
  return c
