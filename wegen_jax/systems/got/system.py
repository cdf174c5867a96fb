"""GoT behind the System interface: text (and a source image to edit) in, chain and image out.

Interactive editing (SYSTEMS.md §2): `chains()` returns only the reasoning chains as `Chain`
objects (phrase, box, colour per object); the user edits them (move a box, swap an object) and
`generate()` with options={'chain': edited} skips the chain generation and draws from it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from wegen_jax.generation.sampling import SamplingConfig
from wegen_jax.systems import base
from wegen_jax.systems.got import export
from wegen_jax.systems.got.chain import Chain, chain_box_iou, objects_drawn, parse_chain
from wegen_jax.systems.got.generate import gen_hidden_states, render, write_chains
from wegen_jax.systems.got.tokenizer import load_tokenizer


def _as_chain(chain) -> Chain:
  if isinstance(chain, Chain):
    return chain
  if isinstance(chain, str):
    return parse_chain(chain)
  return Chain.from_dict(chain)


class GoTSystem(base.System):
  def __init__(self, config, model):
    super().__init__(config, model)
    self.tokenizer = load_tokenizer(config.data.get("tokenizer", ""), model.cfg.num_gen_tokens)
    if model.cfg.vision is not None and self.tokenizer.image_pad_id != model.cfg.image_token_id:
      raise ValueError(
        f"model.image_token_id={model.cfg.image_token_id} but the tokenizer's <|image_pad|> is "
        f"{self.tokenizer.image_pad_id}: set config.model.image_token_id to it"
      )

  export_layouts = export.LAYOUTS

  def export_pytorch(self, out, *, layout: str, dtype=None) -> list[str]:
    return export.export(self.model, self.config, out, layout=layout, dtype=dtype)

  @classmethod
  def import_pytorch(cls, config, src):
    model = cls.build_model(config)
    return model, export.import_into(model, src)

  def _sampling(self, **overrides) -> SamplingConfig:
    s = self.config.sampling
    kw = dict(max_new_tokens=int(s.max_new_tokens), temperature=float(s.temperature))
    return SamplingConfig(**{**kw, **overrides})

  def prompt(self, request: base.Request) -> str:
    if len(request.images) > 1:
      raise ValueError(f"GoT edits one image per request; got {len(request.images)}")
    return self.tokenizer.prompt_text(
      request.text, edit=bool(request.images), image_tokens=self.model.cfg.vision_tokens
    )

  def chains(self, requests: Sequence[base.Request]) -> list[Chain]:
    """Only the reasoning chains (the first half of generate), to show and edit."""
    sources = [r.images[0] if r.images else None for r in requests]
    prompts = [self.prompt(r) for r in requests]
    texts = write_chains(self.model, self.tokenizer, prompts, self._sampling(), seed=requests[0].seed, sources=sources)
    return [parse_chain(t) for t in texts]

  def generate(self, requests: Sequence[base.Request]) -> list[base.Response]:
    """Per request: options 'chain' (a Chain, its dict or its text) skips writing the chain;
    'only_chain' returns the chain without drawing; 'num_steps' overrides the sampler's steps."""
    out = []
    for r in requests:  # one at a time: each mode has its own guidance and its own shapes
      prompt = self.prompt(r)
      chain = r.options.get("chain")
      chain = _as_chain(chain) if chain is not None else self.chains([r])[0]
      if r.options.get("only_chain"):
        out.append(base.Response(chain.text(), [], {"chain": chain.to_dict()}))
        continue
      images = self.draw([prompt], [chain], [r.images[0] if r.images else None], seed=r.seed, **_steps(r))
      out.append(base.Response(chain.text(), [images[0]], {"chain": chain.to_dict()}))
    return out

  def draw(self, prompts, chains: Sequence[Chain], sources, *, seed: int = 0, num_steps: int | None = None):
    """uint8 images for chat prompts and their (possibly edited) chains; sources None = T2I."""
    hidden = gen_hidden_states(self.model, self.tokenizer, prompts, [c.text() for c in chains], sources)
    mode = "edit" if sources[0] is not None else "t2i"
    if any((s is not None) != (mode == "edit") for s in sources):
      raise ValueError("draw() takes either all T2I or all editing requests in one call")
    return render(
      self.model,
      hidden,
      chains,
      sources,
      mode=mode,
      size=int(self.config.data.image_size),
      seed=seed,
      num_steps=num_steps or int(self.config.sampling.num_steps),
    )

  def validation_samples(self, num: int, seed: int = 0) -> list[base.Sample]:
    """`num` held-out synthetic examples: the chain written and the image drawn from it, with
    the ground-truth target, the chain's box IoU against the true boxes and the share of true
    objects drawn in their box (objects_drawn)."""
    size = int(self.config.data.image_size)
    out = []
    for ex in self._held_out(num):
      request = _request(ex, seed)
      response = self.generate([request])[0]
      out.append(
        base.Sample(
          text=ex["text"],
          # T2I's reference image is black (what the UNet sees), so every row has an input
          inputs=list(request.images) or [np.zeros((size, size, 3), np.uint8)],
          target=self._target_uint8(ex["target"]),
          generated=response.images[0],
          record={
            "chain": response.text,
            "box_iou": chain_box_iou(parse_chain(response.text), ex["chain"]),
            "objects_drawn": float(np.mean(objects_drawn(response.images[0], ex["chain"]) or [1.0])),
          },
        )
      )
    return out

  def predict_fns(self):
    def generate_images(prompts: list[dict], rng_seed: int = 0):
      reqs = [base.Request(p["text"], images=tuple(p.get("images", ())), seed=rng_seed) for p in prompts]
      return [r.images[0] for r in self.generate(reqs)]

    def chain_iou(num: int) -> dict[str, float]:
      """Box IoU of the chains written for `num` held-out examples against their ground truth."""
      examples = self._held_out(num)
      reqs = [_request(e) for e in examples]
      # one left-padded batch: one compile of the decoder, not one per prompt length
      scores = [chain_box_iou(c, e["chain"]) for c, e in zip(self.chains(reqs), examples)]
      return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}

    def drawn_from_true_chains(num: int, seed: int = 0) -> dict[str, float]:
      """Images drawn from the ground-truth chains of `num` held-out examples (the decoder and
      SSGM alone, whatever chain the MLLM would write): the share of true objects found in
      their box in their colour (objects_drawn), and the frame MAE (/255) against each
      example's own target and against the next example's (the image follows its chain)."""
      examples = self._held_out(num)
      targets = [self._target_uint8(e["target"]).astype(np.float64) for e in examples]
      found, own, other = [], [], []
      for i, e in enumerate(examples):
        image = self.draw([self.prompt(_request(e))], [e["chain"]], [e["source"]], seed=seed)[0]
        found += objects_drawn(image, e["chain"])
        own.append(np.abs(image - targets[i]).mean())
        other.append(np.abs(image - targets[(i + 1) % num]).mean())
      return {
        "objects_drawn": float(np.mean(found)),
        "mae_own": float(np.mean(own)),
        "mae_other": float(np.mean(other)),
      }

    return {
      "generate_images": generate_images,
      "chain_box_iou": chain_iou,
      "drawn_from_true_chains": drawn_from_true_chains,
    }

  def _held_out(self, num: int) -> list[dict]:
    """The first `num` held-out synthetic examples (data.synthetic_example dicts)."""
    from wegen_jax.systems.got.data import SyntheticGoTSource

    source = SyntheticGoTSource(self.config.data, "validation", self.model.cfg)
    return [source.example(i) for i in range(num)]

  def _target_uint8(self, image) -> np.ndarray:
    """A synthetic frame at the run's image size, uint8 [V, V, 3] (nearest resize, as training sees it)."""
    from wegen_jax.systems.got.data import to_pixels

    pixels = to_pixels(image, int(self.config.data.image_size))
    return np.round((np.transpose(pixels, (1, 2, 0)) + 1) * 127.5).astype(np.uint8)


def _request(example: dict, seed: int = 0) -> base.Request:
  """A synthetic example's request: its caption or instruction, with the source image to edit."""
  return base.Request(example["text"], images=(example["source"],) if example["edit"] else (), seed=seed)


def _steps(request: base.Request) -> dict:
  n = request.options.get("num_steps")
  return {"num_steps": int(n)} if n else {}
