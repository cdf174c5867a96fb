"""WeGenTask: the shared trainer's view of WeGen (model, trainable parts, loss, data).

Stage 1 trains the UNet (the trainer delays all but its attention k/v with
optimizer.freeze_until={'unet': N}), and the vision tower too where it has no pretrained
weights (model.detokenizer_trains_vision, the tiny default);
stages 2 and 3 train the LLM and both projectors while the vision tower, UNet and VAE stay
frozen (the diffusion loss still back-propagates through the UNet into the LLM).
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from wegen_jax.systems.wegen.config import WeGenConfig
from wegen_jax.systems.wegen.loss import wegen_loss
from wegen_jax.systems.wegen.model import WeGen
from wegen_jax.systems.wegen.tokenizer import check_vocab, load_tokenizer
from wegen_jax.training.task import Task
from wegen_jax.training.validation import ConfigError

BUILD_DATA = (
  "build one with `python -m wegen_jax.data.synthetic --out VIDEOS --num 64` then "
  "`python -m wegen_jax.curation --videos VIDEOS --out DATA_DIR --config configs/curate.py:preset=synthetic --label` "
  "(or from real videos), and pass --config.data.dir=DATA_DIR"
)

UNET_KV = re.compile(r"^unet\..*\.attn[12]\.[kv]\.")
TRAINABLE = {1: ("unet",), 2: ("llm", "input_proj", "output_proj"), 3: ("llm", "input_proj", "output_proj")}


class WeGenTask(Task):
  def __init__(self, config):
    super().__init__(config)
    self.stage = int(config.get("stage", 2))
    if self.stage not in TRAINABLE:
      raise ConfigError(f"config.stage={self.stage}; choose 1 (detokenizer), 2 or 3 (MLLM)")
    self.model_config = WeGenConfig.from_dict(config.model)

  def build_model(self, rngs):
    return WeGen(self.model_config, rngs=rngs)

  def check_config(self):
    from wegen_jax.data.schema import DATASET_NAME

    data_dir = self.config.data.get("dir")
    if not data_dir:
      raise ConfigError(f"config.data.dir is not set: WeGen trains on a curated {DATASET_NAME} dataset; {BUILD_DATA}")
    path = Path(data_dir)
    if not path.is_dir():
      raise ConfigError(f"config.data.dir={data_dir} does not exist; {BUILD_DATA}")
    if not (path / DATASET_NAME).is_dir() or not any((path / DATASET_NAME).iterdir()):
      raise ConfigError(
        f"config.data.dir={data_dir} holds no {DATASET_NAME} dataset (no {path / DATASET_NAME}); {BUILD_DATA}"
      )
    tokenizer = self.config.data.get("tokenizer")
    if tokenizer and not Path(tokenizer).exists():
      raise ConfigError(f"config.data.tokenizer={tokenizer} does not exist: point it at a local HF tokenizer directory")
    if self.stage > 1:  # an id past the embedding table would be clamped to its last row, silently
      try:
        check_vocab(load_tokenizer(tokenizer or ""), self.model_config.llm.vocab_size)
      except ValueError as e:
        raise ConfigError(str(e)) from None

  def init_pretrained(self, model):
    from wegen_jax.systems.wegen.pretrained import load_pretrained

    load_pretrained(model, dict(self.config.get("pretrained", {})))

  def trainable_parts(self) -> tuple[str, ...]:
    extra = ("vision",) if self.stage == 1 and self.model_config.detokenizer_trains_vision else ()
    return TRAINABLE[self.stage] + extra

  def init_components(self):
    own_tower = self.stage > 1 and self.model_config.detokenizer_trains_vision  # stage 1 trained it
    return super().init_components() + (("vision",) if own_tower else ())

  def trainable(self):
    return nnx.All(nnx.Param, nnx.Any(*(nnx.PathContains(name) for name in self.trainable_parts())))

  def param_group(self, path):
    # The authors' stage 1: while the UNet is frozen (optimizer.freeze_until['unet']), every
    # attention's key/value projections still train (diffusers to_k/to_v; here attn1/attn2 .k/.v),
    # then the whole UNet (full_ft). At 1792-wide conditioning SDXL's cross-attention k/v do not
    # fit the released weights: they keep their fresh init (normal(0.02), pretrained.py), so
    # they must learn before the rest of the UNet moves. WeGen's detokenizer has no resampler.
    if self.stage == 1 and UNET_KV.search(path):
      return "unet_kv"
    return super().param_group(path)

  def loss_fn(self, model, batch, rng):
    if "frames" in batch:  # data.device_preprocess: the tower inputs are made here, on the device
      from wegen_jax.data.device_resize import tower_inputs

      d = self.config.data
      pixel_values, vae_pixels = tower_inputs(batch["frames"], d.image_size, d.vae_image_size)
      batch = dict(batch, pixel_values=pixel_values, vae_pixels=vae_pixels)
    return wegen_loss(model, batch, rng, self.stage)

  def dataset(self, split, *, seed, global_batch):
    from wegen_jax.systems.wegen.pipeline import make_dataset  # the lead's Grain pipeline; imported lazily

    return make_dataset(self.config, split, seed=seed, global_batch=global_batch)

  def batch_counts(self, batch):
    # Slots computed (padding included), from shapes only: no device-to-host copy, and it works
    # when a process does not hold the whole global batch.
    return {"tokens": float(np.prod(batch["input_ids"].shape)), "images": float(np.prod(batch["image_valid"].shape))}

  def predict_fns(self, model):
    from wegen_jax.systems.wegen.system import WeGenSystem

    return {**super().predict_fns(model), **WeGenSystem(self.config, model).predict_fns()}

  def token_params_prefix(self):
    return "llm"  # 6*N*tokens covers the LLM's matmuls; stage 1 trains none of them

  analytic_flops_cover_model = False

  def remat_summary(self):
    return dict(llm=self.config.model.llm.get("remat"), unet=self.config.model.get("unet_remat"))

  def batch_spec(self, global_batch):
    from wegen_jax.systems.wegen.pipeline import empty_example  # the pipeline's own fixed shapes

    return {
      k: jax.ShapeDtypeStruct((global_batch,) + v.shape, v.dtype)
      for k, v in empty_example(self.config.data, pad_id=0).items()
    }
