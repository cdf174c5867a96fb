"""CLIP-I: cosine between each generated image and its ground-truth image in CLIP image space.

  evals.vist = dict(type="clip_i", clip=".../clip-vit-large-patch14",
                    dataset=dict(kind="vist", sis_json=".../val.story-in-sequence.json", images_dir=...))

GILL's VIST / VisDial protocol (evals/compute_clip_similarity_*.py): the context (a story's
captions and first images, or a dialog's rounds) goes to generate_images, prompt i with seed + i
(sharded over processes, resumable), and the OpenAI CLIP ViT-L/14 image embeddings of the
generated and the ground-truth image are compared (raw cosine, averaged). Reports `clip_i`
and `samples` (items whose images exist; GILL skips the others too).
"""

from __future__ import annotations


from wegen_jax.data.eval_sets import load_eval_set, load_rgb
from wegen_jax.evaluators import require_predict_fns
from wegen_jax.evaluators.image_cache import generated_images
from wegen_jax.evaluators.image_features import CLIPFeatures

CHUNK = 256


class Evaluator:
  def __init__(self, every=0, dataset=None, clip="", seed=0, batch_size=None, options=None):
    if not dataset or not clip:
      raise ValueError("clip_i evaluator needs dataset=dict(kind=..., ...) and clip=<CLIP model folder>")
    self.every, self.dataset, self.clip, self.seed = every, dict(dataset), clip, seed
    self.batch_size, self.options = batch_size, dict(options or {})

  def run(self, predict_fns, step, out_dir=None):
    require_predict_fns(predict_fns, ("generate_images",), "clip_i")
    items = load_eval_set(self.dataset)
    if not items:
      raise ValueError(f"clip_i evaluator: the set {self.dataset} has no items with their images")
    clip = CLIPFeatures(self.clip)
    prompts = _Prompts(items, self.options)
    gen = predict_fns["generate_images"]
    with generated_images(gen, prompts, out_dir, seed=self.seed, batch_size=self.batch_size) as generated:
      truth = lambda idx: clip.images([load_rgb(items[i].target) for i in idx])
      cosines = lambda idx: (clip.images([generated(i) for i in idx]) * truth(idx)).sum(-1)
      scores = generated.scored(f"clip_i {self.clip} {self.dataset}", cosines, CHUNK)
    return {"clip_i": float(scores.mean()), "samples": len(items)}


class _Prompts:
  """The items' prompts, their context images read only when that prompt is generated."""

  def __init__(self, items, options):
    self.items, self.options = items, options

  def __len__(self):
    return len(self.items)

  def __getitem__(self, i):
    return dict(self.items[i].prompt(), options=self.options)
