"""CLIP-T: cosine between each generated image and its prompt in CLIP space (raw, not x100).

  evals.clip_t = dict(type="clip_t", clip=".../clip-vit-base-patch32",
                      dataset=dict(kind="coco_captions", annotations=..., num=4096), guidance_scale=7.0)

WeGen's protocol: OpenAI CLIP ViT-B/32 from a local transformers folder, 4096 COCO-2014
captions, each generated with seed + i (sharded over processes, resumable). The raw cosine is
what GoT reports (Emu-Edit CLIP-T 0.276); CLIPScore papers print 100x or 2.5x max(cos, 0).
"""

from __future__ import annotations


from wegen_jax.data.eval_sets import load_eval_set
from wegen_jax.evaluators import require_predict_fns
from wegen_jax.evaluators.image_cache import generated_images
from wegen_jax.evaluators.image_features import CLIPFeatures

CHUNK = 256


class Evaluator:
  def __init__(self, every=0, dataset=None, clip="", guidance_scale=None, seed=0, batch_size=None):
    if not dataset or not clip:
      raise ValueError("clip_t evaluator needs dataset=dict(kind=..., ...) and clip=<CLIP model folder>")
    self.every, self.dataset, self.clip, self.guidance = every, dict(dataset), clip, guidance_scale
    self.seed, self.batch_size = seed, batch_size

  def run(self, predict_fns, step, out_dir=None):
    require_predict_fns(predict_fns, ("generate_images",), "clip_t")
    items = load_eval_set(self.dataset)
    if not items:
      raise ValueError(f"clip_t evaluator: the set {self.dataset} is empty")
    clip = CLIPFeatures(self.clip)
    options = {} if self.guidance is None else {"guidance_scale": float(self.guidance)}
    prompts = [{"text": it.text, "options": options} for it in items]
    gen = predict_fns["generate_images"]
    with generated_images(gen, prompts, out_dir, seed=self.seed, batch_size=self.batch_size) as generated:
      cosines = lambda idx: (clip.images([generated(i) for i in idx]) * clip.texts([items[i].text for i in idx])).sum(
        -1
      )
      scores = generated.scored(f"clip_t {self.clip} {self.dataset}", cosines, CHUNK)
    return {"clip_t": float(scores.mean()), "samples": len(items)}
