"""GILL / MGCC inference: prompts of interleaved text and images -> text, retrieved or generated images.

A prompt is a list of items, each a string or a uint8 [H, W, 3] image (GILL's
generate_for_images_and_texts); images become their 4 visual tokens. Generation appends
[IMG0]..[IMG7] (or decodes until the LLM writes [IMG0], then forces [IMG1..7]), maps the 8
states to SD's 77 x 768 prompt space and samples SD v1.5 with classifier-free guidance against
the empty prompt's embedding (GILL: guidance 7.5, 50 steps). With MGCC grounding the UNet also
gets the boxes of a layout (GLIGEN), written by the LLM or given.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wegen_jax.diffusion.guidance import ClassifierFree, NoGuidance
from wegen_jax.diffusion.sampling import Conditioning, decode_images, denoise_loop, initial_noise
from wegen_jax.generation.decode import ForcedTokensHook, generate as decode, left_pad
from wegen_jax.generation.sampling import SamplingConfig
from wegen_jax.systems.gill import grounding
from wegen_jax.systems.gill.model import GILL


def split_prompt(text: str, images: Sequence[np.ndarray] = ()) -> list:
  """The evaluators' prompt dict form ('text' with an `<image>` mark per image, else the images
  first) -> an item list."""
  images = list(images)
  if "<image>" not in text:
    return [*images, text] if text else images
  parts = text.split("<image>")
  if len(parts) - 1 != len(images):
    raise ValueError(f"the prompt marks {len(parts) - 1} <image> places but has {len(images)} images")
  items = []
  for i, part in enumerate(parts):
    if part:
      items.append(part)
    if i < len(images):
      items.append(images[i])
  return items


def bucket(n: int, step: int) -> int:
  """n rounded up to a multiple of step: prompts of similar lengths share one compiled program."""
  return -(-n // step) * step


class Prompts:
  """Item lists -> right-padded fixed-shape arrays (ids, segment ids, image slots, pixels)."""

  def __init__(self, encoder, max_images: int):
    self.enc, self.max_images = encoder, max_images

  def rows(self, prompts, append_img: bool):
    tok, nv = self.enc.tok, self.enc.nv
    out = []
    for items in prompts:
      ids, slots, pixels = [tok.bos_id], [], []
      for item in items:
        if isinstance(item, str):
          ids += tok.encode(item)
        else:
          slots.append(list(range(len(ids), len(ids) + nv)))
          pixels.append(self.enc.pixels(np.asarray(item)))
          ids += [tok.pad_id] * nv
      img_start = len(ids)
      if append_img:
        ids += list(tok.img_ids)
      out.append((ids, slots, pixels, img_start))
    return out

  def batch(self, prompts, append_img: bool = True, length: int | None = None):
    rows = self.rows(prompts, append_img)
    n = max(1, self.max_images, *(len(r[1]) for r in rows))
    t = length or bucket(max(len(r[0]) for r in rows), 64)
    s, nv = self.enc.size, self.enc.nv
    b = len(rows)
    ids = np.full((b, t), self.enc.tok.pad_id, np.int32)
    seg = np.zeros((b, t), np.int32)
    pos = np.zeros((b, n, nv), np.int32)
    valid = np.zeros((b, n), bool)
    pix = np.zeros((b, n, 3, s, s), np.float32)
    start = np.zeros((b,), np.int32)
    for i, (r, slots, pixels, img_start) in enumerate(rows):
      ids[i, : len(r)], seg[i, : len(r)], start[i] = r, 1, img_start
      for j, (sl, px) in enumerate(zip(slots, pixels)):
        pos[i, j], valid[i, j], pix[i, j] = sl, True, px
    return dict(
      input_ids=ids, segment_ids=seg, image_positions=pos, image_valid=valid, context_pixels=pix, img_start=start
    )


@nnx.jit
def img_outputs(model: GILL, batch):
  """One LLM pass over prompts ending in [IMG0..7] -> (SD prompt embeddings, [IMG] states, retrieval embedding, decision probs)."""
  pooled = model.image_pooled(batch["context_pixels"])
  embeds = model.embed_inputs(batch["input_ids"], pooled, batch["image_positions"], batch["image_valid"])
  out = model.llm.forward(inputs_embeds=embeds, segment_ids=batch["segment_ids"])
  t = batch["input_ids"].shape[1]
  context = (jnp.arange(t)[None] < batch["img_start"][:, None]) & (batch["segment_ids"] > 0)
  h, e = model.img_states(out.hidden_states, embeds, batch["img_start"], context)
  probs = jax.nn.softmax(model.decide(h), axis=-1)
  return model.sd_embeddings(h, e).astype(jnp.float32), model.text_retrieval_embedding(h), probs


@nnx.jit
def image_embeddings(model: GILL, pixels):
  """CLIP-normalised [B, 3, S, S] -> unit retrieval embeddings [B, 256] scaled by exp(logit_scale)."""
  return model.image_retrieval_embedding(model.image_pooled(pixels)) * jnp.exp(model.logit_scale[...])


@nnx.jit
def sd_text_embeddings(model: GILL, ids):
  return model.sd_text_embeddings(ids)


@nnx.jit
def phrase_embeddings(model: GILL, ids):
  return model.phrase_embeddings(ids)


class _Grounded:
  """The UNet with GLIGEN boxes bound (duplicated over the guidance branches), as denoise_loop
  calls it; grounded only at timesteps >= t_min (GLIGEN's scheduled sampling: the first steps
  lay the objects out, the rest refine without the fuser)."""

  def __init__(self, unet, gligen, t_min):
    self.unet, self.gligen, self.t_min = unet, gligen, t_min

  def forward_nhwc(self, x, t, context, added=None):
    reps = x.shape[0] // self.gligen["boxes"].shape[0]
    g = {k: jnp.concatenate([v] * reps, axis=0) for k, v in self.gligen.items()}
    g["scale"] = (jnp.asarray(t) >= self.t_min).astype(jnp.float32)
    return self.unet.forward_nhwc(x, t, context, added, gligen=g)


@functools.partial(nnx.jit, static_argnames=("scheduler", "num_steps", "guidance", "latent_hw", "grounded_steps"))
def _sample(model: GILL, scheduler, num_steps, cond, gligen, guidance, key, latent_hw, grounded_steps):
  b = cond.encoder_hidden_states.shape[0] // guidance.num_branches
  c = model.unet.cfg.in_channels
  latents = initial_noise(key, b, c, *latent_hw)
  plan = scheduler.plan(num_steps)
  unet = model.unet
  if gligen is not None and grounded_steps > 0:
    unet = _Grounded(model.unet, gligen, plan.timesteps[grounded_steps - 1])
  latents = denoise_loop(unet, scheduler, plan, cond, latents, guidance=guidance, key=key)
  return decode_images(model.vae, latents)


def draw(
  model: GILL,
  prompt_embeds,
  uncond,
  key,
  *,
  num_steps: int,
  guidance_scale: float,
  size: int,
  gligen=None,
  gligen_beta: float = 0.3,
):
  """SD sampling from mapper outputs [B, 77, 768] (uncond: the empty prompt's [1, 77, 768]) -> uint8
  [B, H, W, 3]. gligen: boxes for a GLIGEN UNet, used in the first int(gligen_beta * num_steps)
  steps (diffusers' gligen_scheduled_sampling_beta, default 0.3)."""
  f = model.vae.downsample_factor
  if guidance_scale > 1.0:
    guidance = ClassifierFree(float(guidance_scale))
    context = jnp.concatenate([jnp.broadcast_to(uncond, prompt_embeds.shape), prompt_embeds], axis=0)
  else:
    guidance, context = NoGuidance(), prompt_embeds
  cond = Conditioning(encoder_hidden_states=context)
  grounded = int(gligen_beta * num_steps) if gligen is not None else 0
  return _sample(
    model, model.cfg.sampler(), int(num_steps), cond, gligen, guidance, key, (size // f, size // f), grounded
  )


def decode_text(model: GILL, tok, items, *, max_new_tokens: int, temperature: float = 0.0, seed: int = 0, prompts=None):
  """Greedy (or sampled) continuation of one prompt; [IMG1..7] forced after [IMG0]. -> token ids."""
  batch = prompts.batch([items], append_img=False)
  n = int(batch["segment_ids"].sum())
  p = bucket(n, 256)  # left padding to a bucket: one decode program for prompts of similar lengths
  ids, mask = left_pad([[tok.pad_id] * (p - n) + batch["input_ids"][0, :n].tolist()], tok.pad_id)
  mask[:, : p - n] = 0
  embeds = _prompt_embeds(model, {k: jnp.asarray(v) for k, v in batch.items()})[:, :n]
  embeds = jnp.pad(embeds, ((0, 0), (p - n, 0), (0, 0)))
  sampling = SamplingConfig(max_new_tokens=int(max_new_tokens), temperature=float(temperature), pad_token=tok.pad_id)
  hook = ForcedTokensHook(tok.img_ids[0], tok.img_ids[1:])
  out = decode(
    model.llm, ids, attention_mask=mask, sampling=sampling, rng=jax.random.key(seed), hook=hook, inputs_embeds=embeds
  )
  return np.asarray(out.tokens[0])


@nnx.jit
def _prompt_embeds(model: GILL, batch):
  pooled = model.image_pooled(batch["context_pixels"])
  return model.embed_inputs(batch["input_ids"], pooled, batch["image_positions"], batch["image_valid"])


def layout(model: GILL, tok, prompts, text: str, max_boxes: int, max_new_tokens: int = 64):
  """MGCC grounding: the frozen LLM continues the in-context layout prompt; its boxes, parsed."""
  ids = decode_text(model, tok, [grounding.layout_prompt(text)], max_new_tokens=max_new_tokens, prompts=prompts)
  return grounding.parse_boxes(tok.decode(ids).split("\n")[0], max_boxes)


def recall_at_k(scores: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
  """scores [N, N] (query i matches candidate i) -> R@k: the share of queries whose match ranks in the top k."""
  scores = np.asarray(scores)
  target = scores[np.arange(len(scores)), np.arange(len(scores))]
  rank = (scores > target[:, None]).sum(axis=1)  # candidates scored above the match
  return {f"R@{k}": float(np.mean(rank < k)) for k in ks}
