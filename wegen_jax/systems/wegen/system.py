"""WeGen behind the System interface: requests in (text, references, earlier turns), images out.

A request becomes SEED-X turns: earlier turns' texts and images form the prompt (an earlier
result is an input image of the next turn, which is how refinement keeps what was liked), the
new turn's images go before its text, and the model continues after `[/INST]`. With PSR on
(systems/wegen/psr.py) the model first writes a detailed prompt, then draws it.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from wegen_jax.data.image_preprocess import resize_uint8
from wegen_jax.generation import SamplingConfig, left_pad
from wegen_jax.systems import base
from wegen_jax.systems.wegen import export
from wegen_jax.systems.wegen.config import WeGenConfig
from wegen_jax.systems.wegen.generate import (
  ImageSampling,
  ImageTokens,
  generate,
  images_to_pixels,
  reconstruct,
)
from wegen_jax.systems.wegen.psr import psr_text
from wegen_jax.systems.wegen.sequences import Turn, build_sequence
from wegen_jax.systems.wegen.tokenizer import check_vocab, load_tokenizer


PAD_BUCKET = 64  # prompts are left-padded to a multiple of this many tokens (fewer compiles)


class WeGenSystem(base.System):
  def __init__(self, config, model):
    super().__init__(config, model)
    self.tokenizer = load_tokenizer(config.data.tokenizer)
    check_vocab(self.tokenizer, model.cfg.llm.vocab_size)
    self.image_tokens = ImageTokens.from_tokenizer(self.tokenizer, model.cfg.num_image_tokens)

  export_layouts = export.LAYOUTS

  def export_pytorch(self, out, *, layout: str, dtype=None) -> list[str]:
    return export.export(self.model, self.config, out, layout=layout, dtype=dtype)

  @classmethod
  def mapping_tables(cls, config) -> str:
    return export.mapping_tables(WeGenConfig.from_dict(config.model))

  @classmethod
  def import_pytorch(cls, config, src):
    model = cls.build_model(config)
    return model, export.import_into(model, src)

  def image_sampling(self, **overrides) -> ImageSampling:
    s = self.config.sampling
    return ImageSampling(**{"num_steps": s.num_steps, "guidance_scale": s.guidance_scale, **overrides})

  def _prompt(self, request: base.Request, text: str | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """(prompt ids ending after `[/INST]\\n`, input images in order of appearance)."""
    turns, images = [], []
    for past in request.history:
      turns.append(
        Turn(
          user_text=past.text,
          user_images=len(past.images),
          response_text=past.reply_text,
          response_images=len(past.reply_images),
        )
      )
      images += [*past.images, *past.reply_images]
    turns.append(Turn(user_text=request.text if text is None else text, user_images=len(request.images)))
    images += list(request.images)
    slot = self.config.data.get("instruction_slot", 0)  # the layout the model was trained on
    ids = build_sequence(self.tokenizer, turns, self.model.cfg.num_image_tokens, slot).input_ids[:-1]  # no last </s>
    return ids, images

  def _decode(
    self,
    rows,
    pixels,
    rng,
    *,
    max_new_tokens,
    temperature,
    stop,
    var_cfg_scale=1.0,
    image_first=False,
    guidance=None,
    devices=None,
  ):
    """One batched WeGen decode of token rows of any lengths (left-padded to a multiple of
    PAD_BUCKET, so turns of similar length share one compiled program)."""
    ids, mask = left_pad(rows, self.tokenizer.pad_id)
    extra = -ids.shape[1] % PAD_BUCKET
    ids = np.pad(ids, ((0, 0), (extra, 0)), constant_values=self.tokenizer.pad_id)
    mask = np.pad(mask, ((0, 0), (extra, 0)))
    return generate(
      self.model,
      ids,
      attention_mask=mask,
      tokens=self.image_tokens,
      pixel_values=pixels,
      rng=rng,
      var_cfg_scale=var_cfg_scale,
      sampling=SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, stop_tokens=stop),
      image_sampling=self.image_sampling() if guidance is None else self.image_sampling(guidance_scale=guidance),
      image_first=image_first,
      devices=devices,
    )

  def _options(self, request: base.Request) -> dict:
    """The request's options over config.sampling's defaults (see `generate`)."""
    defaults = self.config.sampling
    opt = lambda name, default=None: request.options.get(name, defaults.get(name, default))  # noqa: E731
    return dict(
      psr=bool(opt("psr", False)),
      psr_max_tokens=int(opt("psr_max_tokens", 192)),
      psr_temperature=float(opt("psr_temperature", 1.0)),
      force_image=bool(opt("force_image", False)),
      temperature=float(opt("temperature", 0.0)),
      max_new_tokens=int(opt("max_new_tokens") or 2 * self.model.cfg.num_image_tokens),
      var_cfg_scale=float(opt("var_cfg_scale", 1.0)),
      guidance_scale=float(opt("guidance_scale")),
    )

  def generate(self, requests: Sequence[base.Request]) -> list[base.Response]:
    """Each request's `num_samples` continuations. Options (defaults in config.sampling): psr
    (prompt self-rewriting: the model first samples a detailed prompt at psr_temperature, then
    draws it; Response.extras['prompts'] holds the rewrites), force_image (the answer starts
    with an image), temperature, max_new_tokens, var_cfg_scale, guidance_scale (the
    detokenizer's classifier-free guidance: FID and CLIP-T runs differ).

    Requests with one sample, greedy text and no PSR are batched: those with equal options are
    decoded together, each row with its own seed's key (so it gets exactly what it gets alone),
    several rows sharded over the local devices. Other requests are decoded one at a time (a
    sampling decoder draws one key per step for the whole batch)."""
    responses: list = [None] * len(requests)
    groups: dict = {}
    for i, request in enumerate(requests):
      o = self._options(request)
      if o["psr"] or o["temperature"] or request.num_samples != 1:
        (responses[i],) = self._respond([request], o, jax.random.key(request.seed))
      else:
        groups.setdefault(tuple(sorted(o.items())), []).append(i)
    for o, idx in groups.items():
      batch = [requests[i] for i in idx]
      keys = jnp.stack([jax.random.key(r.seed) for r in batch])
      devices = self._batch_devices() if len(batch) > 1 else None
      for i, response in zip(idx, self._respond(batch, dict(o), keys, devices)):
        responses[i] = response
    return responses

  def _batch_devices(self):
    """The local devices, in the order of the parameters' mesh when they are sharded (one jitted
    program needs one device order); None when the parameters span other processes' devices too
    (the trainer's global mesh: the rows then follow the parameters' placement)."""
    sharding = getattr(jax.tree.leaves(nnx.state(self.model, nnx.Param))[0], "sharding", None)
    devices = list(sharding.mesh.devices.flat) if isinstance(sharding, NamedSharding) else jax.local_devices()
    return devices if set(devices) <= set(jax.local_devices()) else None

  def _respond(self, requests, o: dict, rng, devices=None) -> list[base.Response]:
    """Requests sharing the options `o`, decoded as one batch of their num_samples rows each.
    rng: one key for all rows, or one per request (one sample each)."""
    counts = [r.num_samples for r in requests]
    prompts = [self._prompt(r, psr_text(r.text) if o["psr"] else None) for r in requests]
    ids = [p[0] for p, n in zip(prompts, counts) for _ in range(n)]
    pixels = _pixels([p[1] for p, n in zip(prompts, counts) for _ in range(n)], self.model.cfg.vision.image_size)
    rows, rewrites, key = ids, [], rng
    if o["psr"]:  # 1. sample the detailed prompts (stop where the model would start drawing)
      key, k_rewrite = jax.random.split(key)
      out = self._decode(
        rows,
        pixels,
        k_rewrite,
        max_new_tokens=o["psr_max_tokens"],
        temperature=o["psr_temperature"],
        stop=(self.tokenizer.eos_id, self.tokenizer.img_start_id),
      )
      rewrites = [self.tokenizer.decode(t).strip() for t in out.text_tokens]
      eos = self.tokenizer.eos_id
      rows = [
        np.concatenate([r, np.asarray([i for i in t if i != eos], np.int32)]) for r, t in zip(ids, out.text_tokens)
      ]
    out = self._decode(  # 2. the images (after the rewrites when psr)
      rows,
      pixels,
      key,
      max_new_tokens=o["max_new_tokens"],
      temperature=o["temperature"],
      stop=(self.tokenizer.eos_id,),
      var_cfg_scale=o["var_cfg_scale"],
      image_first=o["psr"] or o["force_image"],
      guidance=o["guidance_scale"],
      devices=devices,
    )
    text = [self.tokenizer.decode(t).strip() for t in out.text_tokens]
    if o["psr"]:
      text = [f"{r} {t}".strip() for r, t in zip(rewrites, text)]
    responses, start = [], 0
    for n in counts:
      mine = slice(start, start + n)
      images = [im for row in out.images[mine] for im in row]
      extras = dict(prompts=rewrites[mine]) if o["psr"] else {}
      responses.append(base.Response(text="\n".join(t for t in text[mine] if t), images=images, extras=extras))
      start += n
    return responses

  def validation_pairs(self, num: int) -> list[dict]:
    """The first `num` labelled validation pairs of the run's data: text (the first dynamics
    description), source A, target B and B's ground truth (boxes, box_frame, box_label, record)."""
    picked = [r for r in self._validation_records() if r["labelled"]][:num]
    return [
      dict(
        text=r["dynamics"][0],
        source=r["frames"][0],
        target=r["frames"][1],
        boxes=r["boxes"],
        box_frame=r["box_frame"],
        box_label=r["box_label"],
        record=r,
      )
      for r in picked
    ]

  def validation_images(self, num: int) -> list[np.ndarray]:
    """The first `num` validation frames (the second frame of each record)."""
    return [r["frames"][1] for r in self._validation_records()][:num]

  def _validation_records(self) -> list[dict]:
    """The readable two-frame records of the run's validation split, in order."""
    from wegen_jax.data.source import dynamics_dataset

    records = dynamics_dataset(self.config.data.dir, "validation", num_frames=2)
    return [r for r in (records[i] for i in range(len(records))) if r is not None]

  def validation_samples(self, num: int, seed: int = 0) -> list[base.Sample]:
    """The first `num` labelled validation pairs: `[INST] <A> d1 [/INST]` -> the model's frame
    next to the ground-truth B (resized to B's size)."""
    samples = []
    for i, pair in enumerate(self.validation_pairs(num)):
      request = base.Request(text=pair["text"], images=[pair["source"]], seed=seed + i)
      (response,) = self.generate([request])
      target = pair["target"]
      generated = resize_uint8(response.images[0], target.shape[:2]) if response.images else None
      samples.append(base.Sample(request.text, [pair["source"]], target, generated, pair["record"]))
    return samples

  def validation_reconstructions(self, num: int, seed: int = 0) -> list[base.Sample]:
    """Stage 1's check: the first `num` validation frames redrawn by the detokenizer from their
    own vision features (input = target = the frame; generated = the redrawing)."""
    frames = self.validation_images(num)
    if not frames:
      return []
    drawn = self.reconstruct(frames, seed)
    return [base.Sample("reconstruction", [f], f, resize_uint8(d, f.shape[:2])) for f, d in zip(frames, drawn)]

  def reconstruct(self, images: Sequence[np.ndarray], seed: int = 0, batch: int = 16) -> list[np.ndarray]:
    """uint8 images redrawn by the detokenizer from their own avg-pooled vision features."""
    size, out_size = self.model.cfg.vision.image_size, self.config.data.vae_image_size
    out = []
    for start in range(0, len(images), batch):
      pixels = images_to_pixels(images[start : start + batch], size)
      key = jax.random.fold_in(jax.random.key(seed), start)
      out += list(reconstruct(self.model, pixels, key, self.image_sampling(), out_size, out_size))
    return out

  def predict_fns(self):
    def generate_images(prompts, rng_seed=0):
      """One uint8 image per prompt (black where the model drew none), prompt i with seed
      rng_seed + i; `generate` batches those it can, so prompt i gets what it gets alone."""
      requests = [
        base.Request(
          text=p["text"], images=list(p.get("images", ())), seed=rng_seed + i, options=dict(p.get("options", {}))
        )
        for i, p in enumerate(prompts)
      ]
      black = _black(self.config.data.vae_image_size)
      return [r.images[0] if r.images else black for r in self.generate(requests)]

    return {
      "generate_images": generate_images,
      "reconstruct_images": self.reconstruct,
      "validation_pairs": self.validation_pairs,
      "validation_images": self.validation_images,
    }


def _black(size: int) -> np.ndarray:
  return np.zeros((size, size, 3), np.uint8)


def _pixels(image_lists, image_size: int) -> np.ndarray | None:
  """Each row's input images -> vision input [B, N, 3, S, S] (zeros after a row's own); None
  when no row has any."""
  most = max(map(len, image_lists))
  if not most:
    return None
  out = np.zeros((len(image_lists), most, 3, image_size, image_size), np.float32)
  for r, images in enumerate(image_lists):
    if images:
      out[r, : len(images)] = images_to_pixels(images, image_size)
  return out
