"""WeGen's interleaved sequences (SEED-X chat format) with labels and image positions.

One turn: `<s>[INST] {user images}{user text} [/INST]{response text}{response images}</s>`,
each image written `<img><img_00000>..<img_00063></img>`. A DIIC pair is one turn
(`[INST] <A> d1 [/INST] <B>`); a triple adds a second turn (`[INST] d2 [/INST] <C>`), the
multi-turn refinement WeGen is trained for.

Supervision follows SEED-X: prompt tokens are masked; response text, `<img>` and `</s>` are
targets; `<img_i>` and `</img>` are masked (the image itself is supervised through the
regression and diffusion losses at those positions).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from wegen_jax.systems.wegen.tokenizer import WeGenTokenizer
from wegen_jax.training.losses import IGNORE_INDEX


@dataclasses.dataclass(frozen=True)
class Turn:
  user_text: str = ""
  user_images: int = 0  # images placed before the user text
  response_text: str = ""
  response_images: int = 0  # images the model generates after the response text


@dataclasses.dataclass
class TokenSequence:
  input_ids: np.ndarray  # [T] int32
  labels: np.ndarray  # [T] int32, labels[t] = target of the logits at t
  image_token_positions: np.ndarray  # [N, Q] int32, positions of <img_i> per image, in order
  image_is_target: np.ndarray  # [N] bool


def build_sequence(tok: WeGenTokenizer, turns: Sequence[Turn], num_image_tokens: int = 64) -> TokenSequence:
  ids: list[int] = []
  is_target: list[bool] = []
  positions: list[list[int]] = []
  image_targets: list[bool] = []
  image_ids = tok.image_token_ids(num_image_tokens)

  def add(tokens, target: bool):
    ids.extend(tokens)
    is_target.extend([target] * len(tokens))

  def add_image(target: bool):
    add([tok.img_start_id], target)
    positions.append(list(range(len(ids), len(ids) + num_image_tokens)))
    add(image_ids, False)
    add([tok.img_end_id], False)
    image_targets.append(target)

  for turn in turns:
    add([tok.bos_id], False)
    add(tok.encode("[INST] "), False)
    for _ in range(turn.user_images):
      add_image(False)
    add(tok.encode(f"{turn.user_text} [/INST]\n"), False)
    if turn.response_text:
      add(tok.encode(turn.response_text), True)
    for _ in range(turn.response_images):
      add_image(True)
    add([tok.eos_id], True)

  ids_arr = np.asarray(ids, np.int32)
  target = np.asarray(is_target, bool)
  labels = np.full_like(ids_arr, IGNORE_INDEX)
  labels[:-1] = np.where(target[1:], ids_arr[1:], IGNORE_INDEX)
  return TokenSequence(
    ids_arr,
    labels,
    np.asarray(positions, np.int32).reshape(len(positions), num_image_tokens),
    np.asarray(image_targets, bool),
  )


def dynamics_turns(dynamics: Sequence[str], caption: str = "", caption_first: bool = False) -> list[Turn]:
  """Turns for frames A, B, C.. with texts d1, d2..: `[INST] <A> d1 [/INST] <B>`, then
  `[INST] d2 [/INST] <C>`. caption_first: A is generated from the caption first (T2I turn)."""
  turns = [Turn(user_text=caption, response_images=1)] if caption_first else []
  for k, text in enumerate(dynamics):
    turns.append(Turn(user_text=text, user_images=int(k == 0 and not caption_first), response_images=1))
  return turns
