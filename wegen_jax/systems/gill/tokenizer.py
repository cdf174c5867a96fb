"""GILL's two tokenizers: the LLM's with [IMG0]..[IMG7] as its last 8 ids, and SD's text encoder's.

Real runs read local tokenizer.json files (OPT's, to which the release added `<|image|>` and the
8 [IMG] tokens, so [IMG0] = 50266; SD v1.5's CLIP tokenizer). The tiny default is byte-level
(WeGen's offline byte tokenizer) for both; its SD side appends its own end token 261.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tokenizers

from wegen_jax.systems.wegen.tokenizer import byte_level_tokenizer

IMG_TOKENS = tuple(f"[IMG{i}]" for i in range(8))
TINY_SD_EOS, TINY_SD_VOCAB = 260, 262


def _load(path: str | os.PathLike, what: str) -> tokenizers.Tokenizer:
  f = Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)
  if not f.is_file():
    raise FileNotFoundError(f"{what} tokenizer not found: {f} (point the config at a local folder with tokenizer.json)")
  return tokenizers.Tokenizer.from_file(str(f))


class GILLTokenizer:
  """LLM text <-> ids; `img_ids` are the [IMG] token ids (the vocabulary's last rows)."""

  def __init__(self, path: str | os.PathLike | None, vocab_size: int, num_img_tokens: int = 8):
    tok = _load(path, "LLM") if path else byte_level_tokenizer()
    names = IMG_TOKENS[:num_img_tokens]
    missing = [t for t in names if tok.token_to_id(t) is None]
    if missing:
      tok.add_special_tokens(missing)
    self.tokenizer = tok
    self.img_ids = tuple(tok.token_to_id(t) for t in names)
    want = tuple(range(vocab_size - num_img_tokens, vocab_size))
    if self.img_ids != want:
      raise ValueError(
        f"the tokenizer puts [IMG0..{num_img_tokens - 1}] at ids {self.img_ids}, but the LLM's vocabulary "
        f"({vocab_size}) keeps them in its last rows {want}: check config.model.llm.vocab_size and the tokenizer"
      )
    self.pad_id = 0 if not path else (tok.token_to_id("<pad>") or 1)
    self.bos_id = tok.token_to_id("<s>") if tok.token_to_id("<s>") is not None else tok.token_to_id("</s>")

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def decode(self, ids) -> str:
    return self.tokenizer.decode([int(i) for i in ids if int(i) not in self.img_ids], skip_special_tokens=True)


class SDTokenizer:
  """Caption -> SD text-encoder ids, padded/truncated to `length` (SD: 77 with BOS/EOS, pad = EOS)."""

  def __init__(self, path: str | os.PathLike | None, length: int):
    self.length = length
    self.tokenizer = _load(path, "SD text") if path else None
    if self.tokenizer is not None:
      self.bos = self.tokenizer.token_to_id("<|startoftext|>")
      self.eos = self.tokenizer.token_to_id("<|endoftext|>")

  def __call__(self, text: str) -> np.ndarray:
    if self.tokenizer is None:  # tiny: bytes, then the end token, zero padding
      ids = list(text.encode("utf-8"))[: self.length - 1] + [TINY_SD_EOS]
      return np.asarray(ids + [0] * (self.length - len(ids)), np.int32)
    body = self.tokenizer.encode(text, add_special_tokens=False).ids[: self.length - 2]
    ids = [self.bos] + body + [self.eos]
    return np.asarray(ids + [self.eos] * (self.length - len(ids)), np.int32)
