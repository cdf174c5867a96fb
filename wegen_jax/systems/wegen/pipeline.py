"""Grain pipeline for WeGen training: curated dynamics records -> fixed-shape batches.

Per example (L = data.max_len, N = data.max_images, Q = data.num_image_tokens):
  input_ids, segment_ids, positions, labels   int32 [L]  (labels aligned: target of logits at t)
  pixel_values          float32 [N, 3, S, S]  vision-tower input (CLIP mean/std)
  vae_pixels            float32 [N, 3, V, V]  diffusion target in [-1, 1]
    or, with data.device_preprocess, instead of both:
  frames                uint8 [N, F, F, 3]    the curated frames (F = data.frame_size); the train
                        step makes the two arrays above from them (data/device_resize.py)
  image_token_positions int32 [N, Q]          where each image's Q <img_i> tokens sit
  image_valid, image_is_target  bool [N]
  example_valid, examples_packed, examples_dropped   scalars (data.pack > 1 packs several per row)
An example that cannot be used (unlabelled, longer than L, more than N images) becomes an
empty row (all padding, no targets) instead of being dropped, so every process sees the same
global batch indices and resumed runs stay exact; `example_valid` counts them.
`data.first_turn` weights draw frame A from text in some records (text-to-image and PSR turns,
systems/wegen/psr.py); the others give A as the input image.
"""

from __future__ import annotations


import grain
import numpy as np

from wegen_jax.data.image_preprocess import preprocess_image, sd_preprocess
from wegen_jax.data.loader import process_batches
from wegen_jax.systems.wegen.psr import first_turn, first_turn_kind
from wegen_jax.systems.wegen.sequences import TokenSequence, build_sequence, dynamics_turns
from wegen_jax.systems.wegen.tokenizer import WeGenTokenizer, load_tokenizer
from wegen_jax.training.losses import IGNORE_INDEX


def image_arrays(d) -> dict[str, np.ndarray]:
  """A row's image slots: float32 tower inputs made on the host, or with data.device_preprocess
  the uint8 frames they are made from in the train step (~1/20 of the bytes at 7B sizes)."""
  N, S, V = d.max_images, d.image_size, d.vae_image_size
  if d.get("device_preprocess", False):
    F = d.frame_size
    return {"frames": np.zeros((N, F, F, 3), np.uint8)}
  return {"pixel_values": np.zeros((N, 3, S, S), np.float32), "vae_pixels": np.zeros((N, 3, V, V), np.float32)}


def empty_example(d, pad_id: int) -> dict[str, np.ndarray]:
  L, N, Q = d.max_len, d.max_images, d.num_image_tokens
  return {
    "input_ids": np.full((L,), pad_id, np.int32),
    "segment_ids": np.zeros((L,), np.int32),
    "positions": np.zeros((L,), np.int32),
    "labels": np.full((L,), IGNORE_INDEX, np.int32),
    **image_arrays(d),
    "image_token_positions": np.zeros((N, Q), np.int32),
    "image_valid": np.zeros((N,), bool),
    "image_is_target": np.zeros((N,), bool),
    "example_valid": np.zeros((), bool),
    "examples_packed": np.zeros((), np.int32),
    "examples_dropped": np.zeros((), np.int32),
  }


def pack_example(seq: TokenSequence, images: np.ndarray, d, pad_id: int) -> dict[str, np.ndarray]:
  """Pads one sequence and its images (uint8 [N', H, W, 3]) to the fixed shapes."""
  return pack_examples([(seq, images)], d, pad_id)


def pack_examples(parts, d, pad_id: int) -> dict[str, np.ndarray]:
  """Packs (sequence, images) parts one after another into one row: part j gets segment id
  j + 1 (attention stays within a segment), positions restarting at 0 and the next image
  slots. A part that does not fit in the tokens or slots left is left out (counted in
  `examples_dropped`); labels end each sequence with IGNORE, so no loss crosses a boundary."""
  out = empty_example(d, pad_id)
  t0 = n0 = segment = dropped = 0
  for seq, images in parts:
    t, n = len(seq.input_ids), len(seq.image_is_target)
    if t0 + t > d.max_len or n0 + n > d.max_images or n != len(images):
      dropped += 1
      continue
    segment += 1
    out["input_ids"][t0 : t0 + t] = seq.input_ids
    out["segment_ids"][t0 : t0 + t] = segment
    out["positions"][t0 : t0 + t] = np.arange(t)
    out["labels"][t0 : t0 + t] = seq.labels
    out["image_token_positions"][n0 : n0 + n] = seq.image_token_positions + t0
    out["image_valid"][n0 : n0 + n] = True
    out["image_is_target"][n0 : n0 + n] = seq.image_is_target
    for i, frame in enumerate(images):
      if "frames" in out:
        if frame.shape != out["frames"].shape[1:]:
          raise ValueError(
            f"a record holds {frame.shape[0]}x{frame.shape[1]} frames but data.frame_size={d.frame_size}: "
            f"set --config.data.frame_size to the curation's frame_size ({frame.shape[0]}), or turn "
            "data.device_preprocess off"
          )
        out["frames"][n0 + i] = frame
        continue
      out["pixel_values"][n0 + i] = preprocess_image(frame, d.image_size)
      out["vae_pixels"][n0 + i] = sd_preprocess(frame, d.vae_image_size)
    t0, n0 = t0 + t, n0 + n
  out["example_valid"] = np.asarray(segment > 0)
  out["examples_packed"] = np.asarray(segment, np.int32)
  out["examples_dropped"] = np.asarray(dropped, np.int32)
  return out


def record_sequence(record: dict, tok: WeGenTokenizer, d) -> tuple[TokenSequence, np.ndarray] | None:
  """A labelled record as (sequence, frames); None for one that cannot train (unlabelled)."""
  if not record["labelled"] or not all(record["dynamics"]):
    return None
  weights = d.get("first_turn", None) or {}
  weights = weights.to_dict() if hasattr(weights, "to_dict") else dict(weights)
  if d.get("caption_first", False):
    weights = dict(caption=1.0)
  turns = dynamics_turns(record["dynamics"], first_turn=first_turn(record, first_turn_kind(record, weights)))
  return build_sequence(tok, turns, d.num_image_tokens, d.get("instruction_slot", 0)), record["frames"]


def records_to_row(records, tok: WeGenTokenizer, d) -> dict[str, np.ndarray]:
  """Consecutive records (`data.pack` of them) packed into one row; unusable ones (unlabelled,
  too long, too many images) are skipped and counted."""
  parts = [p for p in (record_sequence(r, tok, d) for r in records) if p is not None]
  out = pack_examples(parts, d, tok.pad_id)
  out["examples_dropped"] += len(records) - len(parts)
  return out


def make_dataset(config, split: str, *, seed: int, global_batch: int) -> grain.IterDataset:
  """This process's rows of each global batch from the curated dataset at config.data.dir.
  With data.pack = k > 1, row i packs records k*i .. k*i+k-1 (those that fit): a fixed
  mapping, so every process and a resumed run see the same rows."""
  from wegen_jax.data.source import dynamics_dataset  # imports TFDS

  d = config.data
  tok = load_tokenizer(d.tokenizer)
  records = dynamics_dataset(d.dir, split, shuffle_seed=seed)
  k = int(d.get("pack", 1))
  if k <= 1:
    rows = records.map(lambda r: records_to_row([r], tok, d))
  else:
    rows = grain.MapDataset.range(len(records) // k).map(
      lambda i: records_to_row([records[i * k + j] for j in range(k)], tok, d)
    )
  return process_batches(rows, global_batch, d.get("read_threads", 1), d.get("workers", 0))
