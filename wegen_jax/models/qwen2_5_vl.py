"""Qwen2.5-VL as one NNX module (transformers' Qwen2_5_VLForConditionalGeneration, images only).

    model = Qwen2_5_VL(cfg, rngs=nnx.Rngs(0))          # or convert.load_hf_qwen2_5_vl(path)
    logits = model(input_ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask)
    out = model.forward(...)                           # LLMOutput(logits, hidden_states, cache)

Inputs are transformers' processor layout: pixel_values [num_patches, C*T*P*P] (all images'
patches in order, each image's patches grouped in spatial-merge blocks), image_grid_thw
[num_images, 3] (t, h, w in patches) and input_ids with one image-pad token per merged patch.

The vision tower is a windowed ViT: patches are permuted so each window is contiguous, most
blocks attend within windows and `fullatt_block_indexes` attend within whole images (both
as segment ids for our one attention function), then a 2x2 merger maps to the LLM width and the
permutation is undone. Window layout depends on the grid, so the tower needs image_grid_thw as
host data (numpy, or static under jit). The M-RoPE positions (`get_rope_index`) are jnp code
and work on traced ids and grids too. The text model is models/llm.py's LLM.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wegen_jax.layers import MLP, Attention, Dense, GatedMLP, RMSNorm, RopeConfig, inverse_frequencies
from wegen_jax.layers.scan import scan_blocks
from wegen_jax.models.llm import LLM, LLMConfig, LLMOutput
from wegen_jax.models.presets import LLM_DEFAULTS, LLM_PRESETS, QWEN_VISION_PRESETS
from wegen_jax.parallel.sharding import constrain


@dataclasses.dataclass(frozen=True)
class QwenVisionConfig:
  depth: int = 32
  hidden_size: int = 1280
  intermediate_size: int = 3420
  num_heads: int = 16
  out_hidden_size: int = 2048  # the LLM width
  in_channels: int = 3
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  window_size: int = 112  # in pixels
  fullatt_block_indexes: Sequence[int] = (7, 15, 23, 31)
  hidden_act: str = "silu"
  rope_theta: float = 10000.0
  norm_eps: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "xla"
  # one scanned block body (layers/scan.py) with the attention kind chosen per layer: the 3B's
  # 32 blocks compile once instead of 32 times
  scan_layers: bool = False

  def __post_init__(self):
    object.__setattr__(self, "fullatt_block_indexes", tuple(int(i) for i in self.fullatt_block_indexes))
    if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
      raise ValueError(
        f"vision hidden_size={self.hidden_size} / num_heads={self.num_heads} must be a head dim divisible by 4 "
        "(2D rotary splits it between h and w)"
      )
    if self.window_size % (self.spatial_merge_size * self.patch_size):
      raise ValueError(
        f"window_size={self.window_size} must be a multiple of spatial_merge_size * patch_size "
        f"= {self.spatial_merge_size * self.patch_size}"
      )

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    return self.in_channels * self.temporal_patch_size * self.patch_size**2

  @property
  def merge_unit(self) -> int:
    return self.spatial_merge_size**2

  def replace(self, **kw) -> "QwenVisionConfig":
    return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True)
class Qwen2_5_VLConfig:
  text: LLMConfig
  vision: QwenVisionConfig
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653

  def __post_init__(self):
    if self.text.mrope_section is None:
      raise ValueError("Qwen2.5-VL's text config needs mrope_section (M-RoPE), e.g. (16, 24, 24)")
    if 2 * sum(self.text.mrope_section) != self.text.dim_per_head:
      raise ValueError(
        f"mrope_section {self.text.mrope_section} must sum to head_dim/2 = {self.text.dim_per_head // 2}"
      )
    if self.vision.out_hidden_size != self.text.hidden_size:
      raise ValueError(
        f"vision out_hidden_size={self.vision.out_hidden_size} must equal the text hidden_size={self.text.hidden_size}"
      )

  def replace(self, **kw) -> "Qwen2_5_VLConfig":
    return dataclasses.replace(self, **kw)


def qwen2_5_vl_config(preset: str = "qwen2_5_vl_3b", *, text=None, vision=None, **kw) -> Qwen2_5_VLConfig:
  """Config from models/presets.py: text LLM_PRESETS[preset], vision QWEN_VISION_PRESETS[preset];
  `text`/`vision` dicts override their fields, kw the token ids."""
  if preset not in QWEN_VISION_PRESETS:
    raise ValueError(f"unknown Qwen2.5-VL preset {preset!r}; known: {sorted(QWEN_VISION_PRESETS)}")
  text_cfg = LLMConfig(**{**LLM_DEFAULTS, **LLM_PRESETS[preset], **(text or {})})
  vision_cfg = QwenVisionConfig(**{**QWEN_VISION_PRESETS[preset], **(vision or {})})
  return Qwen2_5_VLConfig(text_cfg, vision_cfg, **kw)


# ----------------------------------------------------------------------------- vision layout (host)


class VisionLayout(NamedTuple):
  """Host-side index data of one image_grid_thw (all in the window-permuted patch order)."""

  patch_order: np.ndarray  # [N] processor patch index at each permuted slot
  merged_inverse: np.ndarray  # [N / merge_unit] permuted merged slot of each processor merged patch
  hw: np.ndarray  # [N, 2] (h, w) patch coordinates for the 2D rotary
  full_segments: np.ndarray  # [N] 1-based id of each patch's frame (full-attention blocks)
  window_segments: np.ndarray  # [N] 1-based id of each patch's window


def _concrete_grid(grid_thw) -> np.ndarray:
  try:
    grid = np.asarray(grid_thw, np.int64).reshape(-1, 3)
  except jax.errors.TracerArrayConversionError:
    raise ValueError(
      "the Qwen2.5-VL vision tower needs image_grid_thw as host data (numpy, or a static argument under jit): "
      "its window layout is computed from it"
    ) from None
  return grid


def vision_layout(cfg: QwenVisionConfig, grid_thw) -> VisionLayout:
  """Window permutation, rotary coordinates and attention segments for image_grid_thw (t, h, w)."""
  grid = _concrete_grid(grid_thw)
  m, u = cfg.spatial_merge_size, cfg.merge_unit
  win = cfg.window_size // m // cfg.patch_size  # window side in merged patches
  hw, frames, window_index, window_ids = [], [], [], []
  merged_offset, frame_id, window_id = 0, 0, 0
  for t, h, w in grid:
    if h % m or w % m:
      raise ValueError(f"image grid (t={t}, h={h}, w={w}) is not divisible by spatial_merge_size={m}")
    # (h, w) of each patch in the processor's order: merge blocks, row-major inside each block
    hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    block = lambda a: a.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)
    hw.append(np.tile(np.stack([block(hh), block(ww)], -1), (t, 1)))
    frames.append(np.repeat(np.arange(frame_id, frame_id + t) + 1, h * w))
    frame_id += t
    # merged patches grouped by window (row-major windows, row-major inside), frame by frame
    gh, gw = h // m, w // m
    nh, nw = -(-gh // win), -(-gw // win)
    index = np.full((t, nh * win, nw * win), -1)
    index[:, :gh, :gw] = np.arange(t * gh * gw).reshape(t, gh, gw)
    index = index.reshape(t, nh, win, nw, win).transpose(0, 1, 3, 2, 4).reshape(t * nh * nw, win * win)
    for row in index:
      row = row[row >= 0]
      if row.size:
        window_index.append(row + merged_offset)
        window_id += 1
        window_ids.append(np.full(row.size * u, window_id))
    merged_offset += t * gh * gw
  window_index = np.concatenate(window_index)
  patch_order = (window_index[:, None] * u + np.arange(u)[None]).reshape(-1)
  return VisionLayout(
    patch_order=patch_order,
    merged_inverse=np.argsort(window_index),
    hw=np.concatenate(hw)[patch_order],
    full_segments=np.concatenate(frames)[patch_order],
    window_segments=np.concatenate(window_ids),
  )


# ----------------------------------------------------------------------------- vision tower


class VisionBlock(nnx.Module):
  def __init__(self, cfg: QwenVisionConfig, *, rngs: nnx.Rngs):
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
    self.norm1 = RMSNorm(cfg.hidden_size, eps=cfg.norm_eps, **kw)
    self.attn = Attention(
      cfg.hidden_size,
      cfg.num_heads,
      cfg.head_dim,
      qkv_bias=True,
      out_bias=True,
      attention_impl=cfg.attention_impl,
      **kw,
    )
    self.norm2 = RMSNorm(cfg.hidden_size, eps=cfg.norm_eps, **kw)
    self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, act=cfg.hidden_act, use_bias=True, **kw)

  def __call__(self, x, rope, segments):
    x = constrain(x, ("batch", "length", "act_embed"))
    x = x + self.attn(self.norm1(x), rope=rope, q_segment_ids=segments, kv_segment_ids=segments)
    return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
  """RMSNorm, then each merge block's patches concatenated and mapped to the LLM width."""

  def __init__(self, cfg: QwenVisionConfig, *, rngs: nnx.Rngs):
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
    width = cfg.hidden_size * cfg.merge_unit
    self.merge_unit = cfg.merge_unit
    self.ln_q = RMSNorm(cfg.hidden_size, eps=cfg.norm_eps, **kw)
    self.mlp = MLP(width, width, act="gelu", use_bias=True, out_features=cfg.out_hidden_size, **kw)

  def __call__(self, x):  # [N, E] -> [N / merge_unit, out]
    x = self.ln_q(x)
    return self.mlp(x.reshape(x.shape[0] // self.merge_unit, -1))


class QwenVisionTransformer(nnx.Module):
  def __init__(self, cfg: QwenVisionConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
    # Conv3d with stride = kernel over one flattened patch is a matmul.
    self.patch_embed = Dense(cfg.patch_dim, cfg.hidden_size, axes=(None, "embed"), **kw)
    self.blocks = nnx.List([VisionBlock(cfg, rngs=rngs) for _ in range(cfg.depth)])
    self.merger = PatchMerger(cfg, rngs=rngs)

  def rotary(self, hw: np.ndarray):
    """cos/sin [1, N, head_dim]: half the frequencies rotate by h, half by w (HF's axial rope)."""
    inv_freq = jnp.asarray(inverse_frequencies(RopeConfig(self.cfg.head_dim // 2, self.cfg.rope_theta)))
    freqs = (jnp.asarray(hw, jnp.float32)[..., None] * inv_freq).reshape(hw.shape[0], -1)
    emb = jnp.concatenate([freqs, freqs], axis=-1)[None]
    return jnp.cos(emb), jnp.sin(emb)

  def __call__(self, pixel_values: jax.Array, grid_thw) -> jax.Array:
    """pixel_values [N, C*T*P*P], grid_thw [num_images, 3] (host) -> merged features [N / 4, out]."""
    cfg = self.cfg
    layout = vision_layout(cfg, grid_thw)
    if pixel_values.ndim != 2 or pixel_values.shape != (layout.patch_order.size, cfg.patch_dim):
      raise ValueError(
        f"pixel_values has shape {tuple(pixel_values.shape)}; image_grid_thw describes "
        f"{layout.patch_order.size} patches of {cfg.patch_dim} values (C*T*P*P)"
      )
    x = self.patch_embed(pixel_values.astype(jnp.dtype(cfg.dtype)))[layout.patch_order][None]
    rope = self.rotary(layout.hw)
    full, window = jnp.asarray(layout.full_segments[None]), jnp.asarray(layout.window_segments[None])
    if cfg.scan_layers and len(self.blocks) > 1:
      x = self._scanned_blocks(x, rope, full, window)
    else:
      for i, block in enumerate(self.blocks):
        x = block(x, rope, full if i in cfg.fullatt_block_indexes else window)
    return self.merger(x[0])[layout.merged_inverse]

  def _scanned_blocks(self, x, rope, full, window):
    """The blocks as one scan; the carried layer index picks full or windowed segments."""
    full_at = jnp.asarray(self.cfg.fullatt_block_indexes or (-1,), jnp.int32)

    def call(block, carry):
      h, i = carry
      return block(h, rope, jnp.where(jnp.any(full_at == i), full, window)), i + 1

    x, _ = scan_blocks(self.blocks, (x, jnp.zeros((), jnp.int32)), call)
    return x


# ----------------------------------------------------------------------------- M-RoPE positions


def get_rope_index(
  input_ids, image_grid_thw=None, attention_mask=None, *, image_token_id: int, spatial_merge_size: int
):
  """transformers' Qwen2_5_VLModel.get_rope_index for text and images, in jnp.

  Text tokens advance all three axes by one; an image's tokens sit at the current position plus
  their (t, h, w) index in the merged grid, and the text after it resumes at max(h, w) past it.
  Padding (attention_mask 0) is skipped and gets position 0.
  Returns (positions [3, B, T] int32, rope_deltas [B, 1]): a decoded token at slot s (counting
  valid tokens) has position s + rope_delta on all three axes.
  """
  ids = jnp.asarray(input_ids)
  b, t = ids.shape
  valid = jnp.ones((b, t), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
  idx = jnp.broadcast_to(jnp.arange(t), (b, t))
  vpos = jnp.cumsum(valid, axis=1) - 1  # index among the valid tokens
  is_img = (ids == image_token_id) & valid
  if image_grid_thw is None:
    is_img = jnp.zeros_like(is_img)
    grid = jnp.ones((1, 3), jnp.int32)
  else:
    grid = jnp.asarray(image_grid_thw, jnp.int32).reshape(-1, 3)
  # the previous valid token's image flag (HF groups runs after dropping the padding)
  last_valid = jax.lax.cummax(jnp.where(valid, idx, -1), axis=1)
  prev_valid = jnp.concatenate([jnp.full((b, 1), -1), last_valid[:, :-1]], axis=1)
  prev_img = jnp.where(prev_valid >= 0, jnp.take_along_axis(is_img, jnp.maximum(prev_valid, 0), axis=1), False)
  run_start = is_img & ~prev_img
  ordinal = (jnp.cumsum(run_start.reshape(-1)) - 1).reshape(b, t)  # images are numbered across the batch
  g = grid[jnp.clip(ordinal, 0, grid.shape[0] - 1)]  # [B, T, 3]
  gt, gh, gw = g[..., 0], g[..., 1] // spatial_merge_size, g[..., 2] // spatial_merge_size
  start = jax.lax.cummax(jnp.where(run_start, idx, -1), axis=1)
  offset = vpos - jnp.take_along_axis(vpos, jnp.maximum(start, 0), axis=1)
  last_of_image = is_img & (offset == gt * gh * gw - 1)
  step = jnp.where(is_img, jnp.where(last_of_image, jnp.maximum(gh, gw), 0), 1) * valid
  cursor = jnp.cumsum(step, axis=1) - step  # position where the token's text/image run started
  area = jnp.maximum(gh * gw, 1)
  image_pos = jnp.stack(
    [offset // area, (offset // jnp.maximum(gw, 1)) % jnp.maximum(gh, 1), offset % jnp.maximum(gw, 1)]
  )
  pos = cursor[None] + jnp.where(is_img[None], image_pos, 0)
  pos = jnp.where(valid[None], pos, 0).astype(jnp.int32)
  deltas = jnp.max(jnp.where(valid[None], pos, -1), axis=(0, 2)) + 1 - valid.sum(axis=1)
  return pos, deltas[:, None].astype(jnp.int32)


def check_image_tokens(input_ids, image_grid_thw, cfg: Qwen2_5_VLConfig) -> None:
  """Raises unless input_ids hold one image-pad token per merged patch (skipped for traced ids)."""
  try:
    num_tokens = int((np.asarray(input_ids) == cfg.image_token_id).sum())
  except jax.errors.TracerArrayConversionError:
    return
  grid = _concrete_grid(image_grid_thw)
  num_features = int(np.prod(grid, axis=1).sum()) // cfg.vision.merge_unit
  if num_tokens != num_features:
    raise ValueError(
      f"input_ids hold {num_tokens} image-pad tokens (id {cfg.image_token_id}) but image_grid_thw gives "
      f"{num_features} image features; each image needs t*h*w/spatial_merge_size**2 pad tokens "
      "(as transformers' processor inserts)"
    )


def image_tokens(cfg: Qwen2_5_VLConfig, image_grid_thw) -> list[list[int]]:
  """Each image's prompt tokens: <|vision_start|>, one image-pad per merged patch, <|vision_end|>."""
  grid = _concrete_grid(image_grid_thw)
  pads = [int(t * h * w) // cfg.vision.merge_unit for t, h, w in grid]
  return [[cfg.vision_start_token_id] + [cfg.image_token_id] * n + [cfg.vision_end_token_id] for n in pads]


def splice_features(embeds: jax.Array, input_ids: jax.Array, features: jax.Array, token_id: int) -> jax.Array:
  """Replaces the embeddings at `token_id` positions with `features` rows, in row-major order."""
  mask = input_ids == token_id
  index = jnp.clip(jnp.cumsum(mask.reshape(-1)) - 1, 0, max(features.shape[0] - 1, 0))
  picked = features[index].reshape(embeds.shape).astype(embeds.dtype)
  return jnp.where(mask[..., None], picked, embeds)


# ----------------------------------------------------------------------------- the MLLM


class Qwen2_5_VL(nnx.Module):
  """Vision tower + M-RoPE LLM. Same decoding interface as LLM (embed_tokens, init_cache,
  forward with positions/segment_ids/cache), plus `prepare_inputs` for generate() with images."""

  def __init__(self, cfg: Qwen2_5_VLConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.visual = QwenVisionTransformer(cfg.vision, rngs=rngs)
    self.language_model = LLM(cfg.text, rngs=rngs)

  def init_cache(self, batch: int, max_len: int, dtype=None) -> dict:
    return self.language_model.init_cache(batch, max_len, dtype)

  def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
    return self.language_model.embed_tokens(input_ids)

  def get_image_features(self, pixel_values, image_grid_thw) -> jax.Array:
    """[sum of t*h*w/merge**2, text hidden]: every image's merged features, in order."""
    return self.visual(jnp.asarray(pixel_values), image_grid_thw)

  def get_rope_index(self, input_ids, image_grid_thw=None, attention_mask=None):
    """(positions [3, B, T], rope_deltas [B, 1]) as transformers computes them."""
    return get_rope_index(
      input_ids,
      image_grid_thw,
      attention_mask,
      image_token_id=self.cfg.image_token_id,
      spatial_merge_size=self.cfg.vision.spatial_merge_size,
    )

  def embed_inputs(self, input_ids, pixel_values=None, image_grid_thw=None) -> jax.Array:
    """Token embeddings with the image features at the image-pad tokens."""
    input_ids = jnp.asarray(input_ids)
    embeds = self.embed_tokens(input_ids)
    if pixel_values is None:
      return embeds
    if image_grid_thw is None:
      raise ValueError("pixel_values need image_grid_thw ([num_images, 3] t, h, w in patches)")
    check_image_tokens(input_ids, image_grid_thw, self.cfg)
    features = self.get_image_features(pixel_values, image_grid_thw)
    return splice_features(embeds, input_ids, features, self.cfg.image_token_id)

  def prepare_inputs(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None):
    """(inputs_embeds, positions) of a prompt, for generation/decode.generate."""
    if pixel_values is not None and image_grid_thw is not None:
      check_image_tokens(input_ids, image_grid_thw, self.cfg)  # here: the ids are traced inside the jit
    embeds = _embed_inputs_jit(self, jnp.asarray(input_ids), pixel_values, _grid_key(image_grid_thw))
    return embeds, self.get_rope_index(input_ids, image_grid_thw, attention_mask)[0]

  def __call__(self, input_ids=None, **kwargs) -> jax.Array:
    return self.forward(input_ids, **kwargs).logits

  def forward(
    self,
    input_ids=None,
    pixel_values=None,
    image_grid_thw=None,
    attention_mask=None,
    inputs_embeds=None,
    *,
    positions=None,
    segment_ids=None,
    cache=None,
    cache_index=0,
  ) -> LLMOutput:
    """logits [B, T, V] float32, hidden_states [B, T, E] (after the final norm), cache.

    attention_mask/segment_ids: [B, T], 0 = padding (either name). positions: [3, B, T] M-RoPE
    positions; by default get_rope_index of input_ids (a prompt); decoding steps pass them."""
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if inputs_embeds is not None and pixel_values is not None:
      raise ValueError("pixel_values go with input_ids (their features replace the image-pad tokens)")
    segment_ids = attention_mask if segment_ids is None else segment_ids
    if inputs_embeds is None:
      inputs_embeds = self.embed_inputs(input_ids, pixel_values, image_grid_thw)
      prefill = cache is None or (isinstance(cache_index, int) and cache_index == 0)
      if positions is None and prefill:  # later decoding steps need rope_deltas: the caller passes positions
        positions = self.get_rope_index(input_ids, image_grid_thw, segment_ids)[0]
    if segment_ids is not None:
      segment_ids = jnp.asarray(segment_ids).astype(jnp.int32)
    return self.language_model.forward(
      inputs_embeds=inputs_embeds, positions=positions, segment_ids=segment_ids, cache=cache, cache_index=cache_index
    )


def _grid_key(grid_thw):
  return None if grid_thw is None else tuple(map(tuple, _concrete_grid(grid_thw).tolist()))


@nnx.jit(static_argnames=("grid",))
def _embed_inputs_jit(model: Qwen2_5_VL, input_ids, pixel_values, grid):
  return model.embed_inputs(input_ids, pixel_values, None if grid is None else np.asarray(grid))
