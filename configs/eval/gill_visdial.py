"""GILL / MGCC on VisDial, GILL's protocol: a dialog's 10 rounds as 'Q: ...?' / 'A: ...' lines
(no caption) -> generate the image; score the OpenAI CLIP ViT-L/14 image cosine between the
generated and the dialog's image, averaged (the papers: GILL 0.645, MGCC 0.660).

  python -m wegen_jax.eval --config configs/eval/gill_visdial.py:system=gill,visdial=VD,clip=CLIP --workdir RUN

arg: system=gill|mgcc and size as configs/eval/gill_vist.py; visdial: a folder with
visdial_1.0_val.json and VisualDialog_val2018/ (visualdialog.org); clip: a local
openai/clip-vit-large-patch14 folder; num: at most this many dialogs (default all 2064).
"""

from wegen_jax.config_utils import load_config, parse_arg


def get_config(arg=None):
  args = parse_arg(arg, system="gill", size="6.7b", visdial="visdial", clip="clip-vit-large-patch14", num=None)
  c = load_config(f"configs/{args['system']}.py:size={args['size']}")
  folder = args["visdial"]
  dialogs = dict(
    kind="visdial", visdial_json=f"{folder}/visdial_1.0_val.json", images_dir=f"{folder}/VisualDialog_val2018"
  )
  c.evals = dict(visdial=dict(type="clip_i", dataset=dict(dialogs, num=args["num"]), clip=args["clip"]))
  return c
