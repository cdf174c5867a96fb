"""GILLTask: the shared trainer's view of GILL / MGCC (model, trainable parts, loss, data).

Trainable: the [IMG] rows of the frozen LLM's embedding table (trainable_rows masks the gradient
and the update of every other row; after_update rescales the [IMG] rows to the mean norm of the
frozen rows after every step, as the release does), the visual and retrieval projections, the
mapper, the temperature and, for MGCC, the refinement module. Everything else is frozen.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wegen_jax.layers.paths import path_string
from wegen_jax.systems.gill.config import GILLConfig
from wegen_jax.systems.gill.loss import gill_loss
from wegen_jax.systems.gill.model import GILL
from wegen_jax.training.task import Task
from wegen_jax.training.validation import ConfigError

TRAINABLE = ("visual_embeddings", "visual_fc", "ret_text_fc", "gen_text_fc", "logit_scale", "refine")
EMBED = "llm.embed.embedding"


class GILLTask(Task):
  def __init__(self, config):
    super().__init__(config)
    self.model_config = GILLConfig.from_dict(config.model)
    self._encoder = None

  def build_model(self, rngs):
    return GILL(self.model_config, rngs=rngs)

  def check_config(self):
    d = self.config.data
    if d.source == "captions" and not d.get("captions"):
      raise ConfigError(
        "data.source='captions' needs --config.data.captions=FILE.jsonl ({'image': PATH, 'caption': TEXT} lines)"
      )
    if d.source not in ("synthetic", "captions"):
      raise ConfigError(f"data.source={d.source!r}; choose 'synthetic' or 'captions'")

  def init_pretrained(self, model):
    from wegen_jax.systems.gill.pretrained import load_pretrained

    load_pretrained(model, dict(self.config.get("pretrained", {})))

  def trainable(self):
    def is_trainable(path, value):
      if not isinstance(value, nnx.Param):
        return False
      p = path_string(path)
      return p == EMBED or p.split(".")[0] in TRAINABLE

    return is_trainable

  def trainable_rows(self, path):
    if path != EMBED:
      return None
    v = self.model_config.llm.vocab_size
    return (np.arange(v) >= v - self.model_config.num_img_tokens)[:, None]

  def after_update(self, params, step):
    n = self.model_config.num_img_tokens
    table = params["llm"]["embed"]["embedding"]
    t = table[...]
    frozen_norm = jnp.mean(jnp.linalg.norm(t[:-n].astype(jnp.float32), axis=-1))
    rows = t[-n:].astype(jnp.float32)
    rows = rows / jnp.linalg.norm(rows, axis=-1, keepdims=True) * frozen_norm
    table[...] = t.at[-n:].set(rows.astype(t.dtype))
    return params

  def param_group(self, path):
    return "img_tokens" if path == EMBED else super().param_group(path)

  def loss_fn(self, model, batch, rng):
    return gill_loss(model, batch, rng)

  def encoder(self):
    if self._encoder is None:
      from wegen_jax.systems.gill.data import Encoder
      from wegen_jax.systems.gill.tokenizer import GILLTokenizer, SDTokenizer

      cfg, d = self.model_config, self.config.data
      tok = GILLTokenizer(d.get("tokenizer") or None, cfg.llm.vocab_size, cfg.num_img_tokens)
      sd_tok = SDTokenizer(d.get("sd_tokenizer") or None, cfg.sd_text.text.max_position_embeddings)
      self._encoder = Encoder(d, cfg, tok, sd_tok)
    return self._encoder

  def dataset(self, split, *, seed, global_batch):
    from wegen_jax.systems.gill.data import make_dataset

    return make_dataset(self.config, self.encoder(), split, seed=seed, global_batch=global_batch)

  def batch_counts(self, batch):
    return {"tokens": float(np.prod(batch["input_ids"].shape)), "images": float(batch["input_ids"].shape[0])}

  def batch_spec(self, global_batch):
    from wegen_jax.systems.gill.data import source

    example = self.encoder()(source(self.config, "validation")[0])
    return {k: jax.ShapeDtypeStruct((global_batch,) + np.shape(v), np.asarray(v).dtype) for k, v in example.items()}

  def predict_fns(self, model):
    from wegen_jax.systems.gill.system import GILLSystem

    return {**super().predict_fns(model), **GILLSystem(self.config, model).predict_fns()}

  def token_params_prefix(self):
    return None  # the trained parts are small heads on a frozen LLM: the compiled FLOPs are the basis

  analytic_flops_cover_model = False
