"""GoT's tokens and prompts: Qwen2.5-VL's chat format plus the image-generation tokens.

Real runs read Qwen2.5-VL's tokenizer.json from a local directory and add `<|im_gen_start|>`,
`<|im_gen_end|>`, `<|im_gen_0000|>`..`<|im_gen_0063|>` (the embedding rows are appended, so
GoT's ids follow Qwen's 151665 tokens). The tiny default needs no files: a byte-level BPE trained
in a second on synthetic GoT texts (whole words become one token, digits stay single as in Qwen's
pre-tokenizer, any text still encodes byte by byte) with Qwen's chat and grounding tokens and the
same added tokens first (ids 0..75). On raw bytes the tiny model could not learn, in a CPU run of
minutes, to copy the caption's words into the chain (chains held no parsable box).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import tokenizers

from wegen_jax.data.bpe import train_word_bpe
from wegen_jax.systems.got.chain import BOX_END, BOX_START, REF_END, REF_START

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"
IM_GEN_START, IM_GEN_END = "<|im_gen_start|>", "<|im_gen_end|>"
QWEN_TOKENS = [ENDOFTEXT, IM_START, IM_END, REF_START, REF_END, BOX_START, BOX_END, VISION_START, VISION_END, IMAGE_PAD]
SYSTEM_PROMPT = "You are a helpful assistant."
T2I_PROMPT = "Follow the caption to generate an image through a chain of thought process: {}"
EDIT_PROMPT = "Follow the instruction to edit the given image through a chain of thought process: {}"


def im_gen_token(i: int) -> str:
  return f"<|im_gen_{i:04d}|>"


def got_tokens(num_gen: int = 64) -> list[str]:
  return [IM_GEN_START, IM_GEN_END] + [im_gen_token(i) for i in range(num_gen)]


class GoTTokenizer:
  def __init__(self, tokenizer: tokenizers.Tokenizer, num_gen: int = 64):
    self.tokenizer = tokenizer
    missing = [t for t in QWEN_TOKENS + got_tokens(num_gen) if tokenizer.token_to_id(t) is None]
    if missing:
      tokenizer.add_special_tokens(missing)
    self.num_gen = num_gen
    self.gen_start_id, self.gen_end_id = self.token_id(IM_GEN_START), self.token_id(IM_GEN_END)
    self.gen_ids = [self.token_id(im_gen_token(i)) for i in range(num_gen)]
    self.im_end_id, self.eos_id = self.token_id(IM_END), self.token_id(ENDOFTEXT)
    self.image_pad_id = self.token_id(IMAGE_PAD)
    self.pad_id = self.eos_id  # Qwen pads with <|endoftext|>

  def token_id(self, token: str) -> int:
    i = self.tokenizer.token_to_id(token)
    if i is None:
      raise KeyError(f"token {token!r} is not in the tokenizer's vocabulary")
    return i

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def decode(self, ids, skip_special_tokens: bool = False) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def prompt_text(self, text: str, edit: bool, image_tokens: int = 0) -> str:
    """Qwen2.5-VL's chat template with add_generation_prompt; for editing the image comes
    before the instruction (`image_tokens` <|image_pad|> slots; 0 when the MLLM has no vision)."""
    body = (EDIT_PROMPT if edit else T2I_PROMPT).format(text)
    image = f"{VISION_START}{IMAGE_PAD * image_tokens}{VISION_END}" if edit and image_tokens else ""
    return f"{IM_START}system\n{SYSTEM_PROMPT}{IM_END}\n{IM_START}user\n{image}{body}{IM_END}\n{IM_START}assistant\n"

  def image_block(self) -> list[int]:
    """<|im_gen_start|> <|im_gen_0000|>..<|im_gen_0063|>: what follows the chain."""
    return [self.gen_start_id] + self.gen_ids

  def save(self, directory: str | os.PathLike) -> None:
    Path(directory).mkdir(parents=True, exist_ok=True)
    self.tokenizer.save(str(Path(directory) / "tokenizer.json"))


TINY_VOCAB_SIZE = 768  # the tiny default's tokenizer (configs/got.py's vocab_size covers it)


@functools.lru_cache(maxsize=4)
def _tiny_tokenizer_json(num_gen: int) -> str:
  """The built-in tokenizer, trained on the prompts and chains of 256 fixed synthetic examples
  (data.py): deterministic, so training and generation agree without saving it."""
  from wegen_jax.systems.got.data import synthetic_example  # data.py imports this module

  specials = re.compile("|".join(re.escape(t) for t in QWEN_TOKENS + got_tokens(num_gen)))
  corpus = [SYSTEM_PROMPT, "system\n", "user\n", "assistant\n"]
  for i in range(256):
    ex = synthetic_example(i, seed=7, size=64, edit_fraction=0.5)
    corpus += [(EDIT_PROMPT if ex["edit"] else T2I_PROMPT).format(ex["text"]), specials.sub(" ", ex["chain"].text())]
  tok = train_word_bpe(corpus, QWEN_TOKENS + got_tokens(num_gen), TINY_VOCAB_SIZE)
  return tok.to_str()


def tiny_tokenizer(num_gen: int = 64) -> tokenizers.Tokenizer:
  return tokenizers.Tokenizer.from_str(_tiny_tokenizer_json(num_gen))


def load_tokenizer(path: str | os.PathLike | None = "", num_gen: int = 64) -> GoTTokenizer:
  """'' -> the built-in tiny tokenizer; a directory -> its tokenizer.json (+ GoT's tokens)."""
  if not path:
    return GoTTokenizer(tiny_tokenizer(num_gen), num_gen)
  file = Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"no tokenizer.json at {path}: point data.tokenizer at a local Qwen2.5-VL directory")
  return GoTTokenizer(tokenizers.Tokenizer.from_file(str(file)), num_gen)
