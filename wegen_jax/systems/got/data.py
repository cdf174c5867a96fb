"""GoT's embedded default data: synthetic scenes (data/synthetic.py's renderer, read only) as
GoT examples, generated in memory from the record index.

T2I: the caption of a frame -> a chain naming each visible object with its ground-truth box and
colour -> that frame. Editing: the first frame of a clip and the dynamics sentence to its last
frame -> a chain (the target's objects and boxes) -> the last frame.
Every example has fixed shapes (the batch contract of loss.py):

  input_ids, labels, segment_ids, positions [L]   prompt + chain + <|im_gen_start|> + 64 im_gen
                                                   + <|im_gen_end|> <|im_end|>; CE on the chain and
                                                   the markers, not on the 64 im_gen tokens
  gen_positions [64]                               where the 64 im_gen tokens sit
  target, source [3, V, V]                         in [-1, 1]; source black for T2I
  canvases [NB, 3, V, V], canvas_valid [NB]        one box canvas per object (a black one if none)
  source_patches [N, C*T*P*P]                      with a vision tower: the source as Qwen2.5-VL
                                                   patches (black for T2I, whose prompt has no image)
"""

from __future__ import annotations

import grain
import numpy as np

from wegen_jax.data.image_preprocess import resize_uint8
from wegen_jax.data.loader import process_batches
from wegen_jax.data.qwen_vl_images import qwen_vl_pixels
from wegen_jax.data.synthetic import ClipSpec, caption, caption_parts, caption_separators, describe, generate_clip
from wegen_jax.systems.got.chain import Chain, ChainObject, box_canvases, pixel_box_to_chain
from wegen_jax.systems.got.tokenizer import GoTTokenizer, load_tokenizer
from wegen_jax.training.losses import IGNORE_INDEX


def frame_chain(gt: dict, i: int, size: int) -> Chain:
  """Frame i's caption with each visible object's ground-truth box and colour after its phrase.

  The chain repeats the caption's words (as GoT's chains describe the scene with boxes inserted),
  so writing it from a caption is copying: with the tiny LLM's short convolutions the copy is
  learned (docs/GOT.md); chains that reworded the objects ('a white cross' for the caption's
  'a striped white cross at the right') left the colours at chance.
  """
  objects, background = caption_parts(gt, i)
  if not objects:
    return Chain([f"an empty scene with {background}."], [])
  chain_objects = [
    ChainObject(phrase, pixel_box_to_chain(rec["box"], size), rec["state"]["colour"]) for rec, phrase in objects
  ]
  return Chain([""] + caption_separators(len(objects)) + [f" on {background}."], chain_objects)


def synthetic_example(index: int, seed: int, size: int, edit_fraction: float) -> dict:
  """{'text', 'edit', 'chain' (Chain), 'target', 'source' (uint8 [V, V, 3] or None)}."""
  rng = np.random.default_rng([seed, index])
  edit = bool(rng.random() < edit_fraction)
  frames, gt = generate_clip(int(rng.integers(1 << 31)), ClipSpec(size=size, num_frames=8, max_objects=3))
  last = len(frames) - 1
  if not edit:
    return {
      "text": caption(gt, 0),
      "edit": False,
      "chain": frame_chain(gt, 0, size),
      "target": frames[0],
      "source": None,
    }
  instruction = describe(gt, 0, last)
  chain = frame_chain(gt, last, size)
  chain = Chain([f"After the edit: {chain.pieces[0]}"] + chain.pieces[1:], chain.objects)
  return {"text": instruction, "edit": True, "chain": chain, "target": frames[last], "source": frames[0]}


def to_pixels(image: np.ndarray | None, size: int) -> np.ndarray:
  """uint8 [H, W, 3] (None: black) -> float32 [3, size, size] in [-1, 1] (nearest resize)."""
  if image is None:
    return np.full((3, size, size), -1.0, np.float32)
  h, w = image.shape[:2]
  if (h, w) != (size, size):
    image = image[np.arange(size) * h // size][:, np.arange(size) * w // size]
  return np.transpose(image.astype(np.float32) / 127.5 - 1.0, (2, 0, 1))


def source_patches(image: np.ndarray | None, vision, size: int) -> np.ndarray:
  """The source image (None: black) resized to size x size as Qwen2.5-VL patches [N, C*T*P*P]."""
  image = np.zeros((size, size, 3), np.uint8) if image is None else resize_uint8(np.asarray(image), (size, size))
  patches, _ = qwen_vl_pixels(
    [image],
    patch_size=vision.patch_size,
    temporal_patch_size=vision.temporal_patch_size,
    merge_size=vision.spatial_merge_size,
    resize=False,
  )
  return patches


def encode_example(
  tok: GoTTokenizer, ex: dict, *, max_len: int, image_size: int, max_boxes: int, model_cfg=None
) -> dict:
  """One example in the batch contract; model_cfg (a GoTConfig) with a vision tower adds the
  source image to editing prompts and `source_patches`."""
  vision = None if model_cfg is None else model_cfg.vision
  image_tokens = model_cfg.vision_tokens if vision is not None else 0
  prompt = tok.encode(tok.prompt_text(ex["text"], ex["edit"], image_tokens=image_tokens))
  chain = tok.encode(ex["chain"].text())
  ids = prompt + chain + tok.image_block() + [tok.gen_end_id, tok.im_end_id]
  if len(ids) > max_len:
    raise ValueError(f"a GoT example has {len(ids)} tokens > data.max_len={max_len}: raise data.max_len")
  supervised = np.zeros(len(ids), bool)
  supervised[len(prompt) :] = True
  gen_start = len(prompt) + len(chain) + 1
  supervised[gen_start : gen_start + tok.num_gen] = False  # the im_gen tokens are appended, not predicted
  out = {
    "input_ids": np.full(max_len, tok.pad_id, np.int32),
    "labels": np.full(max_len, IGNORE_INDEX, np.int32),
    "segment_ids": np.zeros(max_len, np.int32),
    "positions": np.zeros(max_len, np.int32),
  }
  n = len(ids)
  out["input_ids"][:n] = ids
  out["labels"][: n - 1] = np.where(supervised[1:], ids[1:], IGNORE_INDEX)
  out["segment_ids"][:n] = 1
  out["positions"][:n] = np.arange(n)
  out["gen_positions"] = np.arange(gen_start, gen_start + tok.num_gen, dtype=np.int32)
  out["target"] = to_pixels(ex["target"], image_size)
  out["source"] = to_pixels(ex["source"], image_size)
  objects = ex["chain"].objects[:max_boxes]
  canvases = np.full((max_boxes, 3, image_size, image_size), -1.0, np.float32)
  canvases[: max(len(objects), 1)] = box_canvases(objects, image_size, image_size)
  out["canvases"] = canvases
  out["canvas_valid"] = np.arange(max_boxes) < max(len(objects), 1)
  if vision is not None:
    out["source_patches"] = source_patches(ex["source"], vision, model_cfg.vision_image_size)
  return out


class SyntheticGoTSource:
  """Random access to encoded synthetic GoT examples (a Grain source)."""

  def __init__(self, data, split: str, model_cfg=None):
    self.d, self.model_cfg = data, model_cfg
    self.tok = load_tokenizer(data.get("tokenizer", ""))
    self.seed = int(data.seed) + (0 if split == "train" else 1_000_003)
    self.size = int(data.num_records if split == "train" else data.get("num_validation", 32))

  def __len__(self):
    return self.size

  def example(self, i: int) -> dict:
    return synthetic_example(int(i), self.seed, int(self.d.render_size), float(self.d.edit_fraction))

  def __getitem__(self, i):
    d = self.d
    encode = lambda ex: encode_example(
      self.tok,
      ex,
      max_len=int(d.max_len),
      image_size=int(d.image_size),
      max_boxes=int(d.max_boxes),
      model_cfg=self.model_cfg,
    )
    try:
      return encode(self.example(i))
    except ValueError:  # a rare long edit instruction: the same record as text-to-image instead
      return encode(synthetic_example(int(i), self.seed, int(d.render_size), 0.0))


def make_dataset(config, split: str, *, seed: int, global_batch: int):
  from wegen_jax.systems.got.config import GoTConfig

  source = SyntheticGoTSource(config.data, split, GoTConfig.from_dict(config.model))
  return process_batches(grain.MapDataset.source(source).shuffle(seed=seed), global_batch)


def empty_example(data, model_cfg=None) -> dict:
  """One example's fields at their fixed shapes (for batch_spec)."""
  v, nb, length = int(data.image_size), int(data.max_boxes), int(data.max_len)
  extra = {}
  if model_cfg is not None and model_cfg.vision is not None:
    vis = model_cfg.vision
    n = (model_cfg.vision_image_size // vis.patch_size) ** 2
    extra["source_patches"] = np.zeros((n, vis.patch_dim), np.float32)
  return extra | {
    "input_ids": np.zeros(length, np.int32),
    "labels": np.zeros(length, np.int32),
    "segment_ids": np.zeros(length, np.int32),
    "positions": np.zeros(length, np.int32),
    "gen_positions": np.zeros(64, np.int32),
    "target": np.zeros((3, v, v), np.float32),
    "source": np.zeros((3, v, v), np.float32),
    "canvases": np.zeros((nb, 3, v, v), np.float32),
    "canvas_valid": np.zeros(nb, bool),
  }
