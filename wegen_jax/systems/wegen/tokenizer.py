"""Tokenizers that work offline, with WeGen's special tokens.

Real runs load the HF tokenizer of a local directory (tokenizer.json, e.g. SEED-X's Llama-2
tokenizer with its 330 added tokens) through the `tokenizers` library; missing WeGen
tokens (`<img>`, `</img>`, `<img_00000>`..) are added. The tiny default is built in code: a
word-level byte BPE of the synthetic world's texts (captions, dynamics sentences, short and PSR
prompts), so each word is one token and any other text still encodes byte by byte. On raw bytes
the tiny LLM did not learn to read a caption's places into its image queries (text-to-image drew
no objects; docs/CHAT.md).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from wegen_jax.data.bpe import train_word_bpe

IMG_START, IMG_END = "<img>", "</img>"
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
NUM_IMAGE_TOKEN_NAMES = 100  # SEED-X defines <img_00000>..<img_00099>; WeGen uses the first 64


def image_token(i: int) -> str:
  return f"<img_{i:05d}>"


def wegen_special_tokens() -> list[str]:
  return [IMG_START, IMG_END] + [image_token(i) for i in range(NUM_IMAGE_TOKEN_NAMES)]


class WeGenTokenizer:
  """Text <-> ids plus the ids of the tokens the sequence format needs."""

  def __init__(self, tokenizer: tokenizers.Tokenizer, *, bos: str = BOS, eos: str = EOS, pad: str | None = PAD):
    self.tokenizer = tokenizer
    missing = [t for t in wegen_special_tokens() if tokenizer.token_to_id(t) is None]
    if missing:
      tokenizer.add_special_tokens(missing)
    self.bos_id, self.eos_id = self.token_id(bos), self.token_id(eos)
    self.pad_id = self.token_id(pad) if pad and tokenizer.token_to_id(pad) is not None else 0
    self.img_start_id, self.img_end_id = self.token_id(IMG_START), self.token_id(IMG_END)

  def token_id(self, token: str) -> int:
    i = self.tokenizer.token_to_id(token)
    if i is None:
      raise KeyError(f"token {token!r} is not in the tokenizer's vocabulary")
    return i

  def image_token_ids(self, count: int = 64) -> list[int]:
    return [self.token_id(image_token(i)) for i in range(count)]

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def decode(self, ids, skip_special_tokens: bool = True) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def save(self, directory: str | os.PathLike) -> None:
    Path(directory).mkdir(parents=True, exist_ok=True)
    self.tokenizer.save(str(Path(directory) / "tokenizer.json"))


def check_vocab(tok: WeGenTokenizer, vocab_size: int) -> None:
  """Raises when the tokenizer has ids the LLM's embedding table (vocab_size rows) lacks."""
  if tok.vocab_size > vocab_size:
    raise ValueError(
      f"the tokenizer has {tok.vocab_size} ids (WeGen's image tokens included) but model.llm.vocab_size "
      f"is {vocab_size}: raise model.llm.vocab_size to at least {tok.vocab_size} (or use the tokenizer "
      "the model was trained with)"
    )


def byte_level_tokenizer() -> tokenizers.Tokenizer:
  """256 byte symbols (ids 4..259) after <pad>, <s>, </s>, <unk> (ids 0..3)."""
  specials = [PAD, BOS, EOS, "<unk>"]
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  vocab = {t: i for i, t in enumerate(specials + alphabet)}
  tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens(specials)
  return tok


# The tiny tokenizer's BPE ids (<pad>, <s>, </s>, <unk>, the 256 bytes, merges); WeGen's 102 added
# tokens follow, so the tiny LLM's vocabulary (configs/wegen.py) holds TINY_BPE_SIZE + 102 ids.
TINY_BPE_SIZE = 474


def synthetic_texts(num_clips: int = 48) -> list[str]:
  """What the tiny default reads and writes: the sequence format, captions, dynamics sentences,
  short prompts and PSR requests of `num_clips` fixed clips of the full synthetic grammar."""
  from wegen_jax.data import synthetic  # local: the renderer is only needed to build the tiny default
  from wegen_jax.systems.wegen.psr import psr_text  # psr imports sequences, which imports this module

  texts = ["[INST] ", " [/INST]\n", "nothing changes."]
  spec = synthetic.ClipSpec()
  for seed in range(num_clips):
    _, gt = synthetic.generate_clip(7_000_000 + seed, spec)
    for i in range(0, spec.num_frames - 6, 6):
      text = synthetic.caption(gt, i)
      texts += [text, synthetic.short_prompt(text), psr_text(synthetic.short_prompt(text))]
      if gt["frames"][i]["scene"] == gt["frames"][i + 6]["scene"]:
        texts.append(synthetic.describe(gt, i, i + 6))
  return texts


@functools.lru_cache(maxsize=1)
def _word_level_json() -> str:
  return train_word_bpe(synthetic_texts(), [PAD, BOS, EOS, "<unk>"], TINY_BPE_SIZE).to_str()


def word_level_tokenizer() -> tokenizers.Tokenizer:
  """The tiny default's tokenizer: a word-level BPE of `synthetic_texts` (deterministic: built
  again, not saved, by every process that trains or samples; a change to the synthetic grammar's
  words changes its ids, so tiny runs trained before it would need retraining)."""
  return tokenizers.Tokenizer.from_str(_word_level_json())


def load_tokenizer(path: str | os.PathLike | None = "") -> WeGenTokenizer:
  """'' -> the built-in tiny tokenizer; a directory -> its tokenizer.json (+ WeGen tokens)."""
  if not path:
    return WeGenTokenizer(word_level_tokenizer())
  path = Path(path)
  file = path / "tokenizer.json" if path.is_dir() else path
  if not file.is_file():
    raise FileNotFoundError(
      f"no tokenizer.json at {path}. Point data.tokenizer at a local HF tokenizer directory; a "
      "sentencepiece-only directory can be converted once with transformers: "
      "AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)"
    )
  return WeGenTokenizer(tokenizers.Tokenizer.from_file(str(file)))
