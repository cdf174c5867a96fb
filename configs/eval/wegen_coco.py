"""WeGen zero-shot text-to-image on COCO-2014 captions, as the authors evaluate: FID (clean-fid
at 256 px, 30k captions, guidance 2) and CLIP-T (OpenAI CLIP ViT-B/32 cosine, 4096 captions,
guidance 7), Euler 50 steps.

  python -m wegen_jax.eval --config configs/eval/wegen_coco.py:coco=COCO,weights=W --workdir RUN

arg: size and stage as configs/wegen.py (default 7b, stage 3: the released model; import it into
RUN with `python -m wegen_jax.convert import`, docs/CONVERT.md); coco: a folder with
annotations/captions_val2014.json and val2014/; weights: a folder with
pt_inception-2015-12-05-6726825d.pth (pytorch-fid's release) and clip-vit-base-patch32/ (a local
copy of openai/clip-vit-base-patch32). fid_samples / clip_samples shrink the sets for a quick
look (the FID of fewer samples is biased upwards). Generated images stay in RUN/eval/<step>/.
"""

from wegen_jax.config_utils import load_config, parse_arg


def get_config(arg=None):
  args = parse_arg(arg, size="7b", stage=3, coco="coco", weights="weights", fid_samples=30_000, clip_samples=4096)
  c = load_config(f"configs/wegen.py:size={args['size']},stage={args['stage']}")
  coco, weights = args["coco"], args["weights"]
  captions = dict(kind="coco_captions", annotations=f"{coco}/annotations/captions_val2014.json", seed=0)
  c.sampling.num_steps = 50  # Euler (the 7B sample_scheduler), 50 steps
  c.evals = dict(
    fid=dict(
      type="fid",
      dataset=dict(captions, images_dir=f"{coco}/val2014", num=args["fid_samples"]),
      inception_weights=f"{weights}/pt_inception-2015-12-05-6726825d.pth",
      image_size=256,
      guidance_scale=2.0,
    ),
    clip_t=dict(
      type="clip_t",
      dataset=dict(captions, num=args["clip_samples"]),
      clip=f"{weights}/clip-vit-base-patch32",
      guidance_scale=7.0,
    ),
  )
  return c
