"""Next-token training of the LLM alone, on a synthetic corpus that can be learnt.

Each record is an arithmetic token progression (random start and stride per record) with a
record id, so tests can check that loss falls and that resumed runs neither repeat nor skip
records.
"""

from __future__ import annotations

import grain
import jax
import numpy as np
from flax import nnx

from wegen_jax.data.loader import process_batches
from wegen_jax.models import LLM, LLMConfig
from wegen_jax.training.losses import cross_entropy, next_token_labels
from wegen_jax.training.task import Task


class ProgressionSource:
  def __init__(self, size: int, seq_len: int, vocab: int, seed: int):
    self.size, self.seq_len, self.vocab, self.seed = size, seq_len, vocab, seed

  def __len__(self):
    return self.size

  def __getitem__(self, i):
    rng = np.random.default_rng([self.seed, int(i)])
    start, stride = rng.integers(1, self.vocab), rng.integers(1, 4)
    tokens = (start + stride * np.arange(self.seq_len)) % (self.vocab - 1) + 1
    return {"tokens": tokens.astype(np.int32), "record_id": np.int32(i)}


class LMTask(Task):
  def build_model(self, rngs):
    return LLM(LLMConfig(**self.config.model), rngs=rngs)

  def loss_fn(self, model, batch, rng):
    tokens = batch["tokens"]
    loss, count = cross_entropy(model(tokens), next_token_labels(tokens))
    return loss, {"loss_ce": loss}

  def dataset(self, split, *, seed, global_batch):
    d = self.config.data
    source = ProgressionSource(d.num_records, d.seq_len, self.config.model.vocab_size, d.seed + (split != "train"))
    return process_batches(grain.MapDataset.source(source).shuffle(seed=seed), global_batch)

  def predict_fns(self, model):
    graphdef, state = nnx.split(model)

    @jax.jit
    def nll(state, tokens):
      loss, count = cross_entropy(nnx.merge(graphdef, state)(tokens), next_token_labels(tokens))
      return loss * count, count

    def score_tokens(tokens):
      """int [N, T] token rows -> (sum of next-token NLL, number of predicted tokens)."""
      total, count = nll(state, np.asarray(tokens, np.int32))
      return float(total), float(count)

    def heldout_tokens(num):
      """The first `num` rows of the validation corpus (a different seed from training)."""
      d = self.config.data
      source = ProgressionSource(num, d.seq_len, self.config.model.vocab_size, d.seed + 1)
      return np.stack([source[i]["tokens"] for i in range(num)])

    return {**super().predict_fns(model), "score_tokens": score_tokens, "heldout_tokens": heldout_tokens}

  def batch_counts(self, batch):
    return {"tokens": float(np.prod(batch["tokens"].shape))}

  def batch_spec(self, global_batch):
    return {
      "tokens": jax.ShapeDtypeStruct((global_batch, self.config.data.seq_len), np.int32),
      "record_id": jax.ShapeDtypeStruct((global_batch,), np.int32),
    }
