"""`python -m wegen_jax.systems.wegen.sample --config configs/wegen.py:size=tiny,stage=2 --workdir DIR`

Loads the newest checkpoint of a WeGen training run (DIR/checkpoints), takes validation rows
of the run's dataset, cuts each before its first generated image, and lets the model continue:
it prints the generated text, the cosine between the generated image features and the target
image's, and writes DIR/samples/{row}_{generated,target}.png.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags
from PIL import Image

from wegen_jax.convert.mapping import param_paths
from wegen_jax.data.tokenizer import load_tokenizer
from wegen_jax.generation import SamplingConfig
from wegen_jax.systems.wegen.config import WeGenConfig
from wegen_jax.systems.wegen.generate import ImageSampling, ImageTokens, generate
from wegen_jax.systems.wegen.model import WeGen
from wegen_jax.training.checkpointing import latest_parameters

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file[:arg]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "training run directory")
_NUM = flags.DEFINE_integer("num", 4, "validation rows to continue")


def load_run(config, workdir) -> WeGen:
  cfg = WeGenConfig.from_dict(config.model)
  step, saved = latest_parameters(Path(workdir) / "checkpoints")
  model = nnx.eval_shape(lambda: WeGen(cfg, rngs=nnx.Rngs(0)))
  for path, var in param_paths(model).items():
    if path not in saved:
      raise KeyError(f"{workdir} step {step} has no parameter {path!r}: was it trained with this config?")
    var.set_value(jnp.asarray(saved[path], var.get_value().dtype))
  print(f"loaded {workdir} step {step}")
  return model


def prompts_from_batch(batch, pad_id: int):
  """Rows cut before their first target `<img>`, left-padded; their input images; the targets."""
  rows, pixels, targets = [], [], []
  for b in range(batch["input_ids"].shape[0]):
    slots = np.flatnonzero(batch["image_valid"][b] & batch["image_is_target"][b])
    if not len(slots):
      continue
    cut = int(batch["image_token_positions"][b, slots[0], 0]) - 1
    rows.append(batch["input_ids"][b, :cut])
    pixels.append(
      np.where((np.arange(batch["pixel_values"].shape[1]) < slots[0])[:, None, None, None], batch["pixel_values"][b], 0)
    )
    targets.append((batch["pixel_values"][b, slots[0]], batch["vae_pixels"][b, slots[0]]))
  width = max(len(r) for r in rows)
  ids = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros_like(ids)
  for i, r in enumerate(rows):
    ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
  return ids, mask, np.stack(pixels), targets


def main(_):
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  config = _CONFIG.value
  from wegen_jax.data.wegen_pipeline import make_dataset

  tok = load_tokenizer(config.data.tokenizer)
  model = load_run(config, _WORKDIR.value)
  batch = next(iter(make_dataset(config, "validation", seed=0, global_batch=_NUM.value)))
  ids, mask, pixels, targets = prompts_from_batch(batch, tok.pad_id)
  s = config.sample
  out = generate(
    model,
    ids,
    tokens=ImageTokens.from_tokenizer(tok, model.cfg.num_image_tokens),
    attention_mask=mask,
    pixel_values=pixels,
    var_cfg_scale=s.var_cfg_scale,
    sampling=SamplingConfig(
      max_new_tokens=2 * model.cfg.num_image_tokens, stop_tokens=(tok.eos_id,), pad_token=tok.pad_id
    ),
    image_sampling=ImageSampling(num_steps=s.num_steps, guidance_scale=s.guidance_scale),
    rng=jax.random.key(config.seed),
  )
  out_dir = Path(_WORKDIR.value) / "samples"
  out_dir.mkdir(parents=True, exist_ok=True)
  for i, (target_pixels, target_vae) in enumerate(targets):
    text = tok.decode(out.text_tokens[i])
    line = f"row {i}: text {text!r}, images {len(out.images[i])}"
    if len(out.images[i]):
      want = np.asarray(model.image_features(jnp.asarray(target_pixels)[None]))[0]
      got = out.features[i][0]
      cos = np.mean(np.sum(got * want, -1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1)))
      line += f", feature cosine to target {cos:.3f}"
      Image.fromarray(out.images[i][0]).save(out_dir / f"{i}_generated.png")
    target = np.round((np.transpose(target_vae, (1, 2, 0)) / 2 + 0.5).clip(0, 1) * 255).astype(np.uint8)
    Image.fromarray(target).save(out_dir / f"{i}_target.png")
    print(line)
  print(f"wrote {out_dir}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
