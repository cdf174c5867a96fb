"""Word-level byte BPEs trained in code on a system's synthetic texts: the tiny defaults' tokenizers.

A tiny LLM learns to copy words (a caption's objects into a chain, a prompt's places into image
queries) when each word is one token, not when it is spelled byte by byte (docs/GOT.md,
docs/EVAL.md). Training is deterministic, so training and generation build the same tokenizer
without a file; the byte alphabet is kept, so any text still encodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers


def train_word_bpe(corpus: Iterable[str], special_tokens: Sequence[str], vocab_size: int) -> tokenizers.Tokenizer:
  """A byte-level BPE of at most `vocab_size` ids (special tokens first, then the 256 bytes and
  merges) trained on `corpus`; digits stay single tokens, as in Qwen's and Llama's tokenizers."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence(
    [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
  )
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=list(special_tokens),
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator(corpus, trainer)
  return tok
