"""Grain pipeline for WeGen training: curated dynamics records -> fixed-shape batches.

Per example (L = data.max_len, N = data.max_images, Q = data.num_image_tokens):
  input_ids, segment_ids, positions, labels   int32 [L]  (labels aligned: target of logits at t)
  pixel_values          float32 [N, 3, S, S]  vision-tower input (CLIP mean/std)
  vae_pixels            float32 [N, 3, V, V]  diffusion target in [-1, 1]
  image_token_positions int32 [N, Q]          where each image's Q <img_i> tokens sit
  image_valid, image_is_target  bool [N]
An example that cannot be used (unlabelled, longer than L, more than N images) becomes an
empty row (all padding, no targets) instead of being dropped, so every process sees the same
global batch indices and resumed runs stay exact; `example_valid` counts them.
"""

from __future__ import annotations

import functools

import grain
import numpy as np

from wegen_jax.data.image_preprocess import preprocess_image, sd_preprocess
from wegen_jax.data.loader import process_batches
from wegen_jax.systems.wegen.sequences import TokenSequence, build_sequence, dynamics_turns
from wegen_jax.systems.wegen.tokenizer import WeGenTokenizer, load_tokenizer
from wegen_jax.training.losses import IGNORE_INDEX


def empty_example(d, pad_id: int) -> dict[str, np.ndarray]:
  L, N, Q, S, V = d.max_len, d.max_images, d.num_image_tokens, d.image_size, d.vae_image_size
  return {
    "input_ids": np.full((L,), pad_id, np.int32),
    "segment_ids": np.zeros((L,), np.int32),
    "positions": np.zeros((L,), np.int32),
    "labels": np.full((L,), IGNORE_INDEX, np.int32),
    "pixel_values": np.zeros((N, 3, S, S), np.float32),
    "vae_pixels": np.zeros((N, 3, V, V), np.float32),
    "image_token_positions": np.zeros((N, Q), np.int32),
    "image_valid": np.zeros((N,), bool),
    "image_is_target": np.zeros((N,), bool),
    "example_valid": np.zeros((), bool),
  }


def pack_example(seq: TokenSequence, images: np.ndarray, d, pad_id: int) -> dict[str, np.ndarray]:
  """Pads one sequence and its images (uint8 [N', H, W, 3]) to the fixed shapes."""
  out = empty_example(d, pad_id)
  t, n = len(seq.input_ids), len(seq.image_is_target)
  if t > d.max_len or n > d.max_images or n != len(images):
    return out
  out["input_ids"][:t] = seq.input_ids
  out["segment_ids"][:t] = 1
  out["positions"][:t] = np.arange(t)
  out["labels"][:t] = seq.labels
  out["image_token_positions"][:n] = seq.image_token_positions
  out["image_valid"][:n] = True
  out["image_is_target"][:n] = seq.image_is_target
  for i, frame in enumerate(images):
    out["pixel_values"][i] = preprocess_image(frame, d.image_size)
    out["vae_pixels"][i] = sd_preprocess(frame, d.vae_image_size)
  out["example_valid"] = np.ones((), bool)
  return out


def record_to_example(record: dict, tok: WeGenTokenizer, d) -> dict[str, np.ndarray]:
  if not record["labelled"] or not all(record["dynamics"]):
    return empty_example(d, tok.pad_id)
  turns = dynamics_turns(record["dynamics"], record["caption"], d.get("caption_first", False))
  seq = build_sequence(tok, turns, d.num_image_tokens)
  return pack_example(seq, record["frames"], d, tok.pad_id)


def make_dataset(config, split: str, *, seed: int, global_batch: int) -> grain.IterDataset:
  """This process's rows of each global batch from the curated dataset at config.data.dir."""
  from wegen_jax.data.source import dynamics_dataset  # imports TFDS

  d = config.data
  tok = load_tokenizer(d.tokenizer)
  records = dynamics_dataset(d.dir, split, shuffle_seed=seed)
  examples = records.map(functools.partial(record_to_example, tok=tok, d=d))
  return process_batches(examples, global_batch)
