"""WeGen inference: text and images, multi-turn, with images as inputs.

1. The prompt's `<img_i>` embeddings of every input image are replaced by the projected
   features (a reference picture, or an earlier result to refine: multi-turn is the earlier
   turns' tokens and images in the prompt).
2. Decoding (wegen_jax.generation): after the model emits `<img>`, the next 64 tokens are
   forced to `<img_00000>`..`<img_00063>` with input_proj(output_proj(h)) fed back, then
   `</img>` (no feedback).
3. VAR CFG (scale s != 1): at each fed-back step h = h_u + s (h_c - h_u), where h_u comes from
   an unconditional branch that starts from `<img>` alone and keeps its own KV cache; the
   guided h is what gets fed back (see VARGuidanceHook).
4. Image features: output_proj of the hidden states at `<img>`..`<img_00062>` (the ones that
   chose `<img_00000>`..`<img_00063>`), as in training. The authors' decode slices
   `hidden[eoi-64:eoi]` (the states at `<img_00000>`..`<img_00063>`), one position later than
   their training targets; we follow training.
5. UNet sampling (Euler discrete by default; CFG against zero negative embeddings, SDXL size
   time_ids as the authors' pipeline passes them) and VAE decode.
6. Batches: with one rng key per row, row r's randomness comes from its key alone, so a prompt
   draws the same image in any batch as alone; `devices` shards the rows (and the images) over a
   1-D mesh for data-parallel decoding and sampling.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wegen_jax.data.image_preprocess import preprocess_image
from wegen_jax.diffusion import (
  ClassifierFree,
  Conditioning,
  NoGuidance,
  decode_images,
  initial_noise,
  sample_latents,
)
from wegen_jax.generation import ForcedTokensHook, SamplingConfig
from wegen_jax.generation import generate as decode


@dataclasses.dataclass(frozen=True)
class ImageTokens:
  """Ids of `<img>`, `</img>` and `<img_00000>`.. (from the tokenizer in use)."""

  boi: int
  eoi: int
  image: tuple[int, ...]

  @classmethod
  def from_tokenizer(cls, tok, count: int = 64) -> "ImageTokens":
    return cls(tok.img_start_id, tok.img_end_id, tuple(tok.image_token_ids(count)))

  def placeholder(self) -> list[int]:
    """`<img><img_00000>..</img>`: the tokens an image occupies in a sequence."""
    return [self.boi, *self.image, self.eoi]


@dataclasses.dataclass(frozen=True)
class ImageSampling:
  num_steps: int = 50
  guidance_scale: float = 7.0  # CFG against zero features; 1 = off
  height: int | None = None  # default: the VAE's configured sample_size
  width: int | None = None
  # SDXL time_ids: "sizes" = (H, W, 0, 0, H, W) as the authors' SDXL pipeline passes at inference;
  # "zeros" = what their detokenizer saw in training.
  time_ids: str = "sizes"


class WeGenOutput(NamedTuple):
  tokens: np.ndarray  # [B, N] generated ids (pad after the stop token)
  text_tokens: list  # per row: generated ids without image tokens, `<img>`, `</img>`
  images: list  # per row: uint8 [k, H, W, 3] for the k images it generated
  features: list  # per row: [k, Q, width] image features sent to the UNet


class _PromptEmbeds(nnx.Variable):
  pass


class _LLMWithPrompt(nnx.Module):
  """The LLM seen by the decoder, with the prefill's input embeddings fixed to the prompt's
  (images spliced in); the decode steps pass inputs_embeds themselves."""

  def __init__(self, llm, prompt_embeds):
    self.llm = llm
    self.prompt = _PromptEmbeds(prompt_embeds)

  def init_cache(self, batch, max_len, dtype=None):
    return self.llm.init_cache(batch, max_len, dtype)

  def embed_tokens(self, ids):
    return self.llm.embed_tokens(ids)

  def forward(self, input_ids=None, *, inputs_embeds=None, **kwargs):
    if input_ids is not None:  # the prefill
      inputs_embeds = self.prompt[...]
    return self.llm.forward(inputs_embeds=inputs_embeds, **kwargs)


class _Feedback(nnx.Module):
  def __init__(self, model):
    self.model = model

  def __call__(self, hidden):
    return self.model.feedback(hidden)


class VARGuidanceHook(ForcedTokensHook):
  """ForcedTokensHook whose fed-back hidden states are guided: h = h_u + s (h_c - h_u).

  The unconditional branch sees `<img>` at position 0 and then the same fed-back embeddings as
  the conditional one. Its cache has one slot per decode step (written at the step index);
  each image of a row gets a new segment id, so earlier images' entries are masked out.
  As in the authors' llama2_var.py, guidance changes the fed-back embeddings; the image
  features are read from the conditional hidden states that the decoder records."""

  def __init__(self, model, trigger, forced, feedback, scale: float, max_new_tokens: int):
    super().__init__(trigger, forced, _Feedback(model), feedback)
    self.llm = model.llm
    self.scale = float(scale)
    self.max_new_tokens = int(max_new_tokens)

  def init(self, batch, hidden_size):
    return dict(
      force=super().init(batch, hidden_size),
      step=jnp.int32(0),
      cache=self.llm.init_cache(batch, self.max_new_tokens),
      prev=jnp.zeros((batch, hidden_size), jnp.dtype(self.llm.cfg.dtype)),
      image=jnp.zeros((batch,), jnp.int32),
    )

  def step(self, state, token, hidden):
    force = state["force"]
    idx = jnp.clip(force, 0, len(self.forced) - 1)
    guide = (force >= 0) & jnp.asarray(self.feedback)[idx]
    first = force == 0
    image = state["image"] + first.astype(jnp.int32)
    boi = self.llm.embed_tokens(jnp.full(token.shape, self.trigger, jnp.int32))
    x_u = jnp.where(first[:, None], boi, state["prev"].astype(boi.dtype))

    def branch(cache):
      out = self.llm.forward(
        inputs_embeds=x_u[:, None],
        positions=idx[:, None],
        segment_ids=jnp.where(guide, image, 0)[:, None],
        cache=cache,
        cache_index=state["step"],
      )
      return out.hidden_states[:, 0].astype(hidden.dtype), out.cache

    h_u, cache = jax.lax.cond(jnp.any(guide), branch, lambda c: (hidden, c), state["cache"])
    guided = jnp.where(guide[:, None], h_u + self.scale * (hidden - h_u), hidden)
    token, embed, use_embed, force = super().step(force, token, guided)
    new = dict(
      force=force,
      step=state["step"] + 1,
      cache=cache,
      image=image,
      prev=jnp.where(use_embed[:, None], embed, state["prev"].astype(embed.dtype)),
    )
    return token, embed, use_embed, new


class EditBaseHook(nnx.Module):
  """cfg.image_inplace: wraps the forced-image hook so that the input whose state predicts output
  token k of an image (`<img>` for k=0, `<img_{k-1}>` after) also carries project_in(base[k]),
  as model.embed_edit_bases in training. The base is the row's last prompt image for its first
  drawn image, then the image drawn before (its features as _add_edit_base computes them)."""

  def __init__(self, inner, model, bases, trigger: int, image_ids):
    self.inner = inner
    self.model = model
    self.bases = nnx.Variable(jnp.asarray(bases, jnp.float32))  # [B, Q, C]
    self.trigger = int(trigger)
    self.image_ids = tuple(int(t) for t in image_ids)

  def init(self, batch, hidden_size):
    base = self.bases[...]
    return dict(inner=self.inner.init(batch, hidden_size), base=base, drawn=jnp.zeros_like(base))

  def step(self, state, token, hidden):
    token, embed, use_embed, inner = self.inner.step(state["inner"], token, hidden)
    q = len(self.image_ids)
    hit = token[:, None] == jnp.asarray(self.image_ids, jnp.int32)[None]
    s = jnp.where(hit.any(-1), jnp.argmax(hit, -1), -1)  # token is <img_s>; `hidden` predicted feature s
    rows = jnp.arange(token.shape[0])
    base = state["base"]
    feature = self.model.output_proj(hidden).astype(jnp.float32) + base[rows, jnp.maximum(s, 0)]
    at_s = (jnp.arange(q)[None] == s[:, None])[..., None]  # [B, Q, 1]
    drawn = jnp.where(at_s, feature[:, None], state["drawn"])
    base = jnp.where((s == q - 1)[:, None, None], drawn, base)  # an image done: the next edits it
    k = jnp.where(token == self.trigger, 0, jnp.where((s >= 0) & (s < q - 1), s + 1, -1))
    extra = self.model.project_in(base[rows, jnp.maximum(k, 0)])
    plain = self.model.llm.embed_tokens(token)
    embed = jnp.where(use_embed[:, None], embed.astype(plain.dtype), plain)
    embed = jnp.where((k >= 0)[:, None], embed + extra.astype(plain.dtype), embed)
    return token, embed.astype(hidden.dtype), use_embed | (k >= 0), dict(inner=inner, base=base, drawn=drawn)


def _edit_bases(prompt_features, valid, q: int, width: int) -> np.ndarray:
  """Each row's first edit base [B, Q, C]: its last valid prompt image's features, else zeros."""
  bases = np.zeros((len(valid), q, width), np.float32)
  for r in range(len(valid)):
    slots = np.flatnonzero(valid[r])
    if slots.size:
      bases[r] = prompt_features[r, slots[-1]]
  return bases


class ImageFirstHook(ForcedTokensHook):
  """ForcedTokensHook that starts with `<img>` itself: the first generated token is forced to
  the trigger, so the image follows the prompt directly (PSR's drawing step after the rewrite,
  and a chat turn that must answer with an image). State -2 = 'emit the trigger now'."""

  def init(self, batch, hidden_size):
    return jnp.full((batch,), -2, jnp.int32)

  def step(self, state, token, hidden):
    start = state == -2
    token = jnp.where(start, self.trigger, token)
    return super().step(jnp.where(start, -1, state), token, hidden)


def image_positions(input_ids: np.ndarray, tokens: ImageTokens, num_images: int) -> np.ndarray:
  """[B, N, Q] positions of each image's `<img_i>` run in the (left-padded) prompt, in order;
  unused slots 0. Every run must start with `<img_00000>`."""
  b = input_ids.shape[0]
  q = len(tokens.image)
  out = np.zeros((b, num_images, q), np.int32)
  for r in range(b):
    starts = np.flatnonzero(input_ids[r] == tokens.image[0])
    if len(starts) > num_images:
      raise ValueError(f"prompt row {r} has {len(starts)} images but only {num_images} were given")
    for n, s in enumerate(starts):
      if not np.array_equal(input_ids[r, s : s + q], tokens.image):
        raise ValueError(f"prompt row {r}: the image run at {s} is not <img_00000>..<img_{q - 1:05d}>")
      out[r, n] = np.arange(s, s + q)
  return out


def images_to_pixels(images: Sequence[np.ndarray], image_size: int) -> np.ndarray:
  """uint8 [H, W, 3] images (e.g. an earlier turn's output) -> vision input [k, 3, S, S]."""
  return np.stack([preprocess_image(np.asarray(im), image_size) for im in images]).astype(np.float32)


@nnx.jit
def _prompt_embeds(model, input_ids, pixel_values, positions, valid):
  """The prompt's embeddings and its images' features [B, N, Q, C]."""
  features = model.image_features(pixel_values)
  return model.embed_inputs(input_ids, features, positions, valid), features


def _add_edit_base(f, owner, prompt_features, valid):
  """cfg.image_residual: generated image j of a row adds the features of the image before it,
  the row's last prompt image for its first (zeros with none), its image j-1 after that
  (model.edit_base in training). f [k, Q, C] in row order, owner [k], prompt_features
  [B, N, Q, C], valid [B, N]."""
  f = np.array(f)
  first = _edit_bases(prompt_features, valid, *f.shape[1:])
  for r in dict.fromkeys(owner.tolist()):
    base = first[r]
    for i in np.flatnonzero(owner == r):
      f[i] = base = f[i] + base
  return f


@nnx.jit
def _features(model, hidden):
  return model.output_proj(hidden).astype(jnp.float32)


@nnx.jit
def _own_features(model, pixel_values):
  return model.image_features(pixel_values)


def reconstruct(model, pixel_values, key, sampling: "ImageSampling", height: int, width: int) -> np.ndarray:
  """Stage 1's task: vision input [k, 3, S, S] -> uint8 [k, height, width, 3] drawn by the
  detokenizer from the images' own avg-pooled features."""
  return _detokenize(model, _own_features(model, jnp.asarray(pixel_values)), key, sampling, height, width)


def _detokenize(model, features, key, sampling: ImageSampling, height: int, width: int, latents=None) -> np.ndarray:
  """uint8 [M, height, width, 3] drawn from features [M, Q, width]; latents: the initial noise
  [M, C, h, w] (default: drawn from key for all M together)."""
  features = jnp.asarray(features)
  cond, added = model.condition(features)
  f = model.vae.downsample_factor
  if height % f or width % f:
    raise ValueError(f"height/width {height}x{width} must be multiples of the VAE factor {f}")
  spatial = model.spatial_condition(features, (height // f, width // f))
  if added is not None and sampling.time_ids == "sizes":
    sizes = jnp.asarray([height, width, 0, 0, height, width], jnp.float32)
    added = dict(added, time_ids=jnp.broadcast_to(sizes, added["time_ids"].shape))
  elif added is not None and sampling.time_ids != "zeros":
    raise ValueError(f"ImageSampling.time_ids={sampling.time_ids!r}; choose 'sizes' or 'zeros'")
  guidance = NoGuidance()
  if sampling.guidance_scale != 1.0:  # branches [uncond, cond]: zero features and pooled features
    guidance = ClassifierFree(sampling.guidance_scale)  # (SDXL's force_zeros_for_empty_prompt), same time_ids
    cond = jnp.concatenate([jnp.zeros_like(cond), cond])
    if spatial is not None:
      spatial = jnp.concatenate([jnp.zeros_like(spatial), spatial])
    if added is not None:
      added = {
        "text_embeds": jnp.concatenate([jnp.zeros_like(added["text_embeds"]), added["text_embeds"]]),
        "time_ids": jnp.concatenate([added["time_ids"]] * 2),
      }
  c = Conditioning(
    cond,
    None if added is None else added["text_embeds"],
    None if added is None else added["time_ids"],
    concat_latents=spatial,
  )
  final = sample_latents(
    model.unet,
    model.cfg.sampler(),
    c,
    key,
    num_steps=sampling.num_steps,
    latent_size=(height // f, width // f),
    latents=latents,
    guidance=guidance,
  )
  return np.asarray(decode_images(model.vae, final))


def _split_rng(rng, b: int, sampling: SamplingConfig):
  """(the decoder's key, the images' key or one per row [B]). One key: split as always. One key
  per row: row r's (text, image) keys are its key's split, as if it were decoded alone; the
  decoder draws one key per step for the whole batch, so text must then be greedy (or B = 1)."""
  rng = jax.random.key(0) if rng is None else rng
  if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):  # raw uint32 key data ([2] or [B, 2])
    rng = jax.random.wrap_key_data(rng)
  if rng.ndim == 0:
    k_text, k_image = jax.random.split(rng)
    return k_text, k_image
  if rng.shape != (b,):
    raise ValueError(f"rng: one key or one key per prompt row ({b}), got keys of shape {rng.shape}")
  if b > 1 and not sampling.greedy:
    raise ValueError(
      "one rng key per row needs greedy text (temperature 0) for several rows; decode sampled rows alone"
    )
  pairs = [jax.random.split(k) for k in rng]
  return pairs[0][0], jnp.stack([p[1] for p in pairs])


def _pad_rows(x, multiple: int):
  """x (an array or keys) with its last row repeated up to a multiple of `multiple` rows (the
  copies are dropped later)."""
  n = len(x)
  return x[np.minimum(np.arange(n - n % -multiple), n - 1)] if n % multiple else x


def _draw_images(model, f, rows, key, sampling: ImageSampling, height, width, sharding):
  """Images of features f [M, Q, width] (image m belongs to prompt row rows[m]). key: one key
  (noise for all M together) or one per row (row r's k images start from initial_noise(key_r,
  k), as the row alone draws them, and image j's sampler steps draw from fold_in(key_r, j)).
  sharding: M is padded to a multiple of its devices and split over them."""
  f, rows = np.asarray(f), np.asarray(rows)
  c, s = model.unet.cfg.out_channels, model.vae.downsample_factor
  if key.ndim:
    owners = list(dict.fromkeys(rows.tolist()))  # the rows with images, in order
    latents = np.concatenate(
      [initial_noise(key[r], int(np.sum(rows == r)), c, height // s, width // s) for r in owners]
    )
    key = jnp.stack([jax.random.fold_in(key[r], j) for r in owners for j in range(int(np.sum(rows == r)))])
  else:
    latents = np.asarray(initial_noise(key, len(f), c, height // s, width // s))
  if sharding is None:
    return _detokenize(model, f, key, sampling, height, width, latents=jnp.asarray(latents))
  n, put = len(f), lambda x: jax.device_put(_pad_rows(x, len(sharding.device_set)), sharding)
  key = _pad_rows(key, len(sharding.device_set)) if key.ndim else key
  return _detokenize(model, put(f), key, sampling, height, width, latents=put(latents))[:n]


def batch_sharding(devices) -> jax.sharding.NamedSharding:
  """The batch axis split over `devices` (a 1-D mesh), the rest of each array whole."""
  mesh = jax.sharding.Mesh(np.asarray(list(devices)), ("batch",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))


def generate(
  model,
  input_ids,
  *,
  tokens: ImageTokens,
  attention_mask=None,
  pixel_values=None,
  sampling: SamplingConfig = SamplingConfig(),
  var_cfg_scale: float = 1.0,
  image_sampling: ImageSampling = ImageSampling(),
  rng=None,
  image_first: bool = False,
  devices=None,
) -> WeGenOutput:
  """Continues left-padded prompts [B, P]; pixel_values [B, N, 3, S, S] are the prompt's input
  images in order of appearance (zeros for unused slots). Returns tokens, text tokens and the
  generated images (uint8 [k, H, W, 3] per row). image_first: the continuation starts with an
  image (`<img>` forced) instead of the model choosing when to draw. rng: one key, or one key
  per row (row r then draws what it draws alone; several rows need greedy text). devices: the
  rows, padded with copies of the last to a multiple of their number, are sharded over them
  (data-parallel decoding and sampling); the copies are dropped."""
  input_ids = np.asarray(input_ids, np.int32)
  b = input_ids.shape[0]
  k_text, k_image = _split_rng(rng, b, sampling)
  q = model.cfg.num_image_tokens
  if len(tokens.image) != q:
    raise ValueError(f"tokens.image has {len(tokens.image)} ids; the model uses {q} image tokens")
  s = model.cfg.vision.image_size
  if pixel_values is None:
    pixel_values = np.zeros((b, 0, 3, s, s), np.float32)
  pixel_values = np.asarray(pixel_values, np.float32)
  mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, np.int32)
  sharding = None if devices is None else batch_sharding(devices)
  put = jnp.asarray
  if sharding is not None:
    input_ids, mask, pixel_values = (_pad_rows(x, len(sharding.device_set)) for x in (input_ids, mask, pixel_values))
    put = lambda x: jax.device_put(x, sharding)  # noqa: E731
  positions = image_positions(input_ids, tokens, pixel_values.shape[1])
  valid = (positions != 0).any(-1)
  prompt_features = np.zeros((len(input_ids), 0, q, model.cfg.vision.width), np.float32)
  if pixel_values.shape[1]:
    embeds, prompt_features = _prompt_embeds(model, put(input_ids), put(pixel_values), put(positions), put(valid))
  else:
    embeds = model.llm.embed_tokens(put(input_ids))

  forced = tokens.image + (tokens.eoi,)
  feedback = [model.cfg.image_output == "autoregressive"] * q + [False]  # queries: no feedback
  if image_first and var_cfg_scale != 1.0:
    raise ValueError("image_first supports var_cfg_scale=1 only (VAR CFG starts its branch at an emitted <img>)")
  if var_cfg_scale == 1.0:
    hook = (ImageFirstHook if image_first else ForcedTokensHook)(tokens.boi, forced, _Feedback(model), feedback)
  else:
    hook = VARGuidanceHook(model, tokens.boi, forced, feedback, var_cfg_scale, sampling.max_new_tokens)
  if model.cfg.image_inplace:
    bases = _edit_bases(np.asarray(prompt_features), np.asarray(valid), q, model.cfg.vision.width)
    hook = EditBaseHook(hook, model, put(bases), tokens.boi, tokens.image)
  out = decode(
    _LLMWithPrompt(model.llm, embeds),
    put(input_ids),
    attention_mask=mask,
    sampling=sampling,
    rng=k_text,
    hook=hook,
  )
  ids = np.asarray(out.tokens)[:b]
  hidden = out.hidden_states

  # Image j of a row: the hidden states that chose its 64 `<img_i>` tokens (at `<img>`..`<img_00062>`).
  spans = [
    [i + 1 for i in np.flatnonzero(row == tokens.boi) if np.array_equal(row[i + 1 : i + 2 + q], forced)] for row in ids
  ]
  flat = [(r, s0) for r, row in enumerate(spans) for s0 in row]
  size = model.cfg.vae.sample_size
  size = size if isinstance(size, int) else size[0]
  height, width = image_sampling.height or size, image_sampling.width or size
  images = [np.zeros((0, height, width, 3), np.uint8) for _ in range(b)]
  feats = [np.zeros((0, q, model.cfg.vision.width), np.float32) for _ in range(b)]
  if flat:
    h = jnp.stack([hidden[r, s0 : s0 + q] for r, s0 in flat])
    f = np.asarray(_features(model, h))
    owner = np.asarray([r for r, _ in flat])
    if model.cfg.image_residual:
      f = _add_edit_base(f, owner, np.asarray(prompt_features), np.asarray(valid))
    pics = _draw_images(model, f, owner, k_image, image_sampling, height, width, sharding)
    for r in range(b):
      mine = owner == r
      if mine.any():
        images[r], feats[r] = pics[mine], f[mine]
  drop = set(tokens.image) | {tokens.boi, tokens.eoi}
  text = [[int(t) for t in row[:n] if int(t) not in drop] for row, n in zip(ids, np.asarray(out.lengths))]
  return WeGenOutput(ids, text, images, feats)
