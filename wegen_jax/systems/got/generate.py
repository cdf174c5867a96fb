"""GoT inference (the authors' GenCot.generate): reasoning chain -> 64 hidden states -> SSGM ->
4-branch guided DDPM sampling of the 12-channel UNet -> VAE decode.

1. The MLLM writes the chain after the chat prompt and stops at `<|im_gen_start|>`
   (generation/decode.py, greedy unless sampling says otherwise).
2. `<|im_gen_start|>` and the 64 `<|im_gen_XXXX|>` tokens are appended and one more forward
   pass takes the last hidden states at those 64 positions.
3. SSGM: semantic tokens and pooled embeds; spatial latents from the chain's boxes (parsed
   from its text, so an edited chain steers the layout); the reference latent of the source
   image (black for T2I).
4. Branches [cond, text, image, uncond] (diffusion/guidance.MultiBranch) in one UNet call per step.
A caller with a chain already (interactive editing) starts at step 2.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wegen_jax.diffusion.sampling import Conditioning, decode_images, sample_latents
from wegen_jax.generation.decode import generate as decode, left_pad
from wegen_jax.generation.sampling import SamplingConfig
from wegen_jax.systems.got.chain import Chain, box_canvases
from wegen_jax.systems.got.config import GUIDANCE
from wegen_jax.systems.got.data import source_patches, to_pixels
from wegen_jax.systems.got.tokenizer import GoTTokenizer


def _patches(model, sources, batch: int):
  """[B, N, C*T*P*P] source patches for the vision tower (None without one)."""
  if model.visual is None:
    return None
  sources = sources if sources is not None else [None] * batch
  cfg = model.cfg
  return jnp.asarray(np.stack([source_patches(s, cfg.vision, cfg.vision_image_size) for s in sources]))


@nnx.jit
def _prompt_inputs(model, ids, mask, patches):
  return model.prompt_inputs(ids, mask, patches)


def write_chains(
  model, tok: GoTTokenizer, prompts: Sequence[str], sampling: SamplingConfig, seed: int = 0, sources=None
):
  """Chat prompts (with their source images, None for T2I) -> the chains' texts (up to, not
  including, `<|im_gen_start|>`)."""
  ids, mask = left_pad([tok.encode(p) for p in prompts], tok.pad_id)
  patches = _patches(model, sources, len(prompts))
  extra = {}
  if patches is not None:
    embeds, positions = _prompt_inputs(model, jnp.asarray(ids), jnp.asarray(mask), patches)
    extra = dict(inputs_embeds=embeds, positions=positions)
  sampling = SamplingConfig(
    max_new_tokens=sampling.max_new_tokens,
    temperature=sampling.temperature,
    top_k=sampling.top_k,
    top_p=sampling.top_p,
    stop_tokens=(tok.gen_start_id, tok.eos_id, tok.im_end_id),
    pad_token=tok.pad_id,
  )
  out = decode(model.llm, ids, attention_mask=mask, sampling=sampling, rng=jax.random.key(seed), **extra)
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  chains = []
  for row, n in zip(tokens, lengths):
    row = list(row[:n])
    if row and row[-1] in sampling.stop_tokens:
      row = row[:-1]
    chains.append(tok.decode(row))
  return chains


@nnx.jit
def _gen_hidden(model, ids, positions, segment_ids, patches):
  return model.mllm(ids, positions, segment_ids, patches).hidden_states[:, -model.cfg.num_gen_tokens :]


def gen_hidden_states(
  model, tok: GoTTokenizer, prompts: Sequence[str], chains: Sequence[str], sources=None
) -> jax.Array:
  """The last hidden states at the 64 im_gen positions [B, 64, E] after prompt + chain."""
  rows = [tok.encode(p) + tok.encode(c) + tok.image_block() for p, c in zip(prompts, chains)]
  ids, mask = left_pad(rows, tok.pad_id)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
  patches = _patches(model, sources, len(rows))
  return _gen_hidden(model, jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(mask), patches)


@nnx.jit
def guided_conditioning(model, hidden, source, canvases, valid) -> Conditioning:
  """Branch-major [cond, text, image, uncond] conditioning: hidden [B, 64, E], source
  [B, 3, V, V], canvases [B, N, 3, V, V], valid [B, N]."""
  b, v = hidden.shape[0], source.shape[-1]
  tokens, pooled = model.ssgm(hidden)
  null = model.null_semantic(hidden)
  ref = model.condition_latents(source)
  spatial = model.spatial_latents(canvases, valid)
  zero = jnp.zeros_like(ref)
  cat = lambda *xs: jnp.concatenate(xs, axis=0)
  return Conditioning(
    encoder_hidden_states=cat(tokens, tokens, null, null),
    text_embeds=cat(pooled, pooled, pooled, pooled),
    time_ids=jnp.tile(model.time_ids(b, v, v), (4, 1)),
    concat_latents=cat(
      jnp.concatenate([ref, spatial], 1),
      jnp.concatenate([ref, zero], 1),
      jnp.concatenate([ref, zero], 1),
      jnp.concatenate([zero, zero], 1),
    ),
  )


def render(
  model,
  hidden: jax.Array,
  chains: Sequence[Chain],
  sources: Sequence[np.ndarray | None],
  *,
  mode: str,
  size: int,
  seed: int = 0,
  num_steps: int | None = None,
) -> np.ndarray:
  """uint8 images [B, size, size, 3] from the 64 hidden states, the chains' boxes and the
  sources (None: T2I's black reference), with `mode`'s guidance scales."""
  if mode not in GUIDANCE:
    raise ValueError(f"GoT mode {mode!r}; choose one of {sorted(GUIDANCE)}")
  cfg = model.cfg
  n = max(max((len(c.objects) for c in chains), default=1), 1)
  canvases = np.full((len(chains), n, 3, size, size), -1.0, np.float32)
  valid = np.zeros((len(chains), n), bool)
  for i, c in enumerate(chains):
    k = max(len(c.objects), 1)
    canvases[i, :k], valid[i, :k] = box_canvases(c.objects, size, size), True
  source = np.stack([to_pixels(s, size) for s in sources])
  cond = guided_conditioning(model, hidden, jnp.asarray(source), jnp.asarray(canvases), jnp.asarray(valid))
  f = model.vae.downsample_factor
  latents = sample_latents(
    model.unet,
    cfg.sampler(),
    cond,
    jax.random.key(seed),
    num_steps=num_steps or cfg.num_sample_steps,
    latent_size=(size // f, size // f),
    guidance=GUIDANCE[mode],
  )
  return np.asarray(decode_images(model.vae, latents))
