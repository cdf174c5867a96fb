"""GILL / MGCC on VIST, GILL's protocol: a story's captions c1..c5 with its images i1..i4
(interleaved) -> generate i5; score the OpenAI CLIP ViT-L/14 image cosine between the generated
and the true i5, averaged (the papers: GILL 0.641, MGCC 0.652).

  python -m wegen_jax.eval --config configs/eval/gill_vist.py:system=gill,vist=VIST,clip=CLIP --workdir RUN

arg: system=gill|mgcc and size (configs/gill.py, configs/mgcc.py; default 6.7b, the release's
dimensions: import the authors' checkpoint into RUN with `python -m wegen_jax.convert import`);
vist: a folder with val.story-in-sequence.json (SIS-with-labels) and val_images/ (<photo id>.png,
as GILL's evals/download_vist_images.py saves them); clip: a local openai/clip-vit-large-patch14
folder; num: at most this many stories (default all). Stories with a missing image are skipped,
as in GILL's scripts.
"""

from wegen_jax.config_utils import load_config, parse_arg


def get_config(arg=None):
  args = parse_arg(arg, system="gill", size="6.7b", vist="vist", clip="clip-vit-large-patch14", num=None)
  c = load_config(f"configs/{args['system']}.py:size={args['size']}")
  vist = args["vist"]
  stories = dict(kind="vist", sis_json=f"{vist}/val.story-in-sequence.json", images_dir=f"{vist}/val_images")
  c.evals = dict(vist=dict(type="clip_i", dataset=dict(stories, num=args["num"]), clip=args["clip"]))
  return c
