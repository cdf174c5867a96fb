"""GILLTask: the shared trainer's view of GILL / MGCC (model, trainable parts, loss, data).

Trainable: the [IMG] rows of the frozen LLM's embedding table (trainable_rows masks the gradient
and the update of every other row; after_update rescales the [IMG] rows to the mean norm of the
frozen rows after every step, as the release does), the visual and retrieval projections, the
mapper, the temperature and, for MGCC, the refinement module. Everything else is frozen.
With config.train_decision, only the decision head trains (the release's separate decision model),
on retrieve / generate labels (data.decision_label), everything else frozen as loaded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wegen_jax.layers.paths import path_string
from wegen_jax.systems.gill.config import GILLConfig
from wegen_jax.systems.gill.loss import decision_loss, gill_loss
from wegen_jax.systems.gill.model import GILL
from wegen_jax.training.task import Task
from wegen_jax.training.validation import ConfigError

TRAINABLE = ("visual_embeddings", "visual_fc", "ret_text_fc", "gen_text_fc", "logit_scale", "refine")
EMBED = "llm.embed.embedding"


class GILLTask(Task):
  def __init__(self, config):
    super().__init__(config)
    self.model_config = GILLConfig.from_dict(config.model)
    self.decision_only = bool(config.get("train_decision", False))
    self._encoder = None

  def build_model(self, rngs):
    return GILL(self.model_config, rngs=rngs)

  def check_config(self):
    from wegen_jax.systems.gill.data import SOURCES

    d = self.config.data
    if d.source == "captions" and not d.get("captions"):
      raise ConfigError(
        "data.source='captions' needs --config.data.captions=FILE.jsonl ({'image': PATH, 'caption': TEXT} lines)"
      )
    if d.source == "tfds" and not d.get("dir"):
      raise ConfigError(
        "data.source='tfds' needs --config.data.dir=DATA_DIR (built by python -m wegen_jax.systems.gill.tfds_captions)"
      )
    if d.source not in SOURCES:
      raise ConfigError(f"data.source={d.source!r}; choose {' or '.join(map(repr, SOURCES))}")
    if self.decision_only and (d.source != "synthetic" or int(d.steps) < 2):
      raise ConfigError(
        "train_decision labels a story by whether its target repeats one of its own images: use "
        "data.source='synthetic' with data.steps >= 2 (data.story_text='dynamics' and data.static_fraction > 0 make both classes legible)"
      )

  def init_pretrained(self, model):
    from wegen_jax.systems.gill.pretrained import load_pretrained

    load_pretrained(model, dict(self.config.get("pretrained", {})))

  def init_components(self):
    """With train_decision, everything GILL trained comes from config.init_from (unless named)."""
    named = super().init_components()
    if named or not self.decision_only:
      return named
    return ("llm",) + tuple(p for p in TRAINABLE if p != "refine" or self.model_config.refine)

  def trainable(self):
    def is_trainable(path, value):
      if not isinstance(value, nnx.Param):
        return False
      p = path_string(path)
      if self.decision_only:
        return p.split(".")[0] == "decision"
      return p == EMBED or p.split(".")[0] in TRAINABLE

    return is_trainable

  def trainable_rows(self, path):
    if path != EMBED:
      return None
    v = self.model_config.llm.vocab_size
    return (np.arange(v) >= v - self.model_config.num_img_tokens)[:, None]

  def after_update(self, params, step):
    if self.decision_only:
      return params
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
    return (decision_loss if self.decision_only else gill_loss)(model, batch, rng)

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
