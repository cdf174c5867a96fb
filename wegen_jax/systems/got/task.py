"""GoTTask: the shared trainer's view of GoT (model, trainable parts, loss, data).

Trainable (SYSTEMS.md §2): the LLM's LoRA A/B on q, k, v, o, gate, up, down, its token
embeddings, lm_head (tied to the embeddings in Qwen2.5-VL-3B) and norms; the SSGM projectors;
the whole UNet. Frozen: the LLM's base kernels and biases, the vision tower and the VAE.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from flax import nnx

from wegen_jax.layers.paths import path_string
from wegen_jax.systems.got.config import GoTConfig
from wegen_jax.systems.got.loss import got_loss
from wegen_jax.systems.got.model import GoT
from wegen_jax.training.task import Task

_LLM_TRAINED = re.compile(r"(lora_[ab]|^llm\.embed\.|^llm\.lm_head\.|_norm\.)")


def is_trainable(path: str, full_llm: bool = False) -> bool:
  """Whether the parameter at `path` ('llm.layers.0.attn.q.lora_a', ...) trains."""
  part = path.split(".")[0]
  if part == "llm":
    return full_llm or bool(_LLM_TRAINED.search(path))
  return part in ("semantic", "pooled", "unet")


class GoTTask(Task):
  def __init__(self, config):
    super().__init__(config)
    self.model_config = GoTConfig.from_dict(config.model)

  def build_model(self, rngs):
    return GoT(self.model_config, rngs=rngs)

  def init_pretrained(self, model):
    from wegen_jax.systems.got.pretrained import load_pretrained

    load_pretrained(model, dict(self.config.get("pretrained", {})))

  def trainable(self):
    full = not self.model_config.lora_rank
    return nnx.All(nnx.Param, lambda path, _: is_trainable(path_string(path), full))

  def loss_fn(self, model, batch, rng):
    return got_loss(model, batch, rng)

  def dataset(self, split, *, seed, global_batch):
    from wegen_jax.systems.got.data import make_dataset

    return make_dataset(self.config, split, seed=seed, global_batch=global_batch)

  def batch_counts(self, batch):
    return {"tokens": float(np.prod(batch["input_ids"].shape)), "images": float(batch["target"].shape[0])}

  def batch_spec(self, global_batch):
    from wegen_jax.systems.got.data import empty_example

    return {
      k: jax.ShapeDtypeStruct((global_batch,) + v.shape, v.dtype)
      for k, v in empty_example(self.config.data, self.model_config).items()
    }

  def predict_fns(self, model):
    from wegen_jax.systems.got.system import GoTSystem

    return {**super().predict_fns(model), **GoTSystem(self.config, model).predict_fns()}

  def token_params_prefix(self):
    return None  # LoRA: 6 * N * tokens does not describe the work; the compiled FLOPs do

  analytic_flops_cover_model = False

  def remat_summary(self):
    return dict(llm=self.config.model.llm.get("remat"), unet=self.config.model.get("unet_remat"))
