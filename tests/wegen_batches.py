"""Hand-built WeGen batches in the pipeline's batch contract (the contract of systems/wegen/pipeline.py), and
fast random tiny models."""

import functools

import numpy as np

from wegen_jax.systems.wegen.tokenizer import load_tokenizer
from wegen_jax.training.losses import IGNORE_INDEX

Q = 64


def make_batch(config, batch=2, seed=0):
  """Per row: <s> prompt <img>[input image]</img> instruction <img>[target image]</img> </s>;
  SEED-X labels (the target <img> and the response text supervised, image tokens masked)."""
  tok = load_tokenizer("")
  d = config.data
  rng = np.random.default_rng(seed)
  length, n, s, v = d.max_len, d.max_images, d.image_size, d.vae_image_size
  out = dict(
    input_ids=np.zeros((batch, length), np.int32),
    segment_ids=np.zeros((batch, length), np.int32),
    positions=np.zeros((batch, length), np.int32),
    labels=np.full((batch, length), IGNORE_INDEX, np.int32),
    pixel_values=np.zeros((batch, n, 3, s, s), np.float32),
    image_token_positions=np.zeros((batch, n, Q), np.int32),
    image_valid=np.zeros((batch, n), bool),
    image_is_target=np.zeros((batch, n), bool),
    vae_pixels=np.zeros((batch, n, 3, v, v), np.float32),
  )
  img = [tok.img_start_id] + tok.image_token_ids(Q) + [tok.img_end_id]
  for b in range(batch):
    ids, supervised, slots = [tok.bos_id] + tok.encode("[INST] "), [], []
    slots.append(len(ids) + 1)
    ids += img + tok.encode(f"move the shape {b} [/INST]")
    first_response = len(ids)
    ids += tok.encode("ok ")
    slots.append(len(ids) + 1)
    ids += img + [tok.eos_id]
    supervised = [t >= first_response and ids[t] not in img[1:] for t in range(len(ids))]
    ids = np.asarray(ids)
    m = len(ids)
    out["input_ids"][b, :m] = ids
    out["segment_ids"][b, :m] = 1
    out["positions"][b, :m] = np.arange(m)
    out["labels"][b, : m - 1] = np.where(supervised[1:], ids[1:], IGNORE_INDEX)
    for k, start in enumerate(slots):
      out["image_token_positions"][b, k] = np.arange(start, start + Q)
      out["image_valid"][b, k] = True
      out["image_is_target"][b, k] = k == 1
      base = rng.uniform(-1, 1, (3, 1, 1)) * np.ones((3, v, v))
      yy, xx = np.mgrid[:v, :v] / v
      picture = np.clip(base + (np.abs(yy - 0.3 - 0.3 * k) < 0.15) * (np.abs(xx - 0.5) < 0.2), -1, 1)
      out["vae_pixels"][b, k] = picture
      small = picture[:, :: v // s, :: v // s] if v >= s else np.resize(picture, (3, s, s))
      out["pixel_values"][b, k] = (small - small.mean()) / (small.std() + 1e-6)
  return out


@functools.lru_cache(maxsize=4)
def _abstract(cfg):
  from flax import nnx

  from wegen_jax.systems.wegen import WeGen

  return nnx.split(nnx.eval_shape(lambda: WeGen(cfg, rngs=nnx.Rngs(0))))


def random_model(cfg, seed=0):
  """A WeGen with random weights drawn in numpy: eager init of the UNet/VAE op by op takes a
  minute on a busy CPU, this takes a second. Kernels ~ N(0, 1/fan_in), norms 1, biases small."""
  import jax.numpy as jnp
  from flax import nnx

  graphdef, abstract = _abstract(cfg)
  rng = np.random.default_rng(seed)

  def draw(path, var):
    shape, dtype = var.get_value().shape, var.get_value().dtype
    leaf = str(path[-1])
    if leaf == "scale":
      value = np.ones(shape)
    elif leaf == "bias":
      value = 0.02 * rng.standard_normal(shape)
    elif leaf == "kernel":
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    else:  # embeddings, position tables, class token
      value = 0.02 * rng.standard_normal(shape)
    return var.replace(jnp.asarray(value, dtype))

  state = nnx.from_flat_state([(p, draw(p, v)) for p, v in nnx.to_flat_state(abstract)])
  return nnx.merge(graphdef, state)


def tiny_config(stage=2, sdxl_vae=False, exports=False, **data):
  """configs/wegen.py tiny, shrunk for test speed on a shared CPU: one-level UNet, 1-block EVA,
  16-px target images -> 8x8x12 folded latents (same structure: SDXL text_time conditioning, 64 tokens).
  exports: an LLM transformers has (no short convolutions), for the export tests."""
  from wegen_jax.configs.wegen import get_config

  c = get_config(f"size=tiny,stage={stage}")
  c.data.update(dict(max_len=176, vae_image_size=16), **data)
  m = c.model
  m.vision.depth = 1
  if exports:
    m.llm.short_conv = 0
  m.unet.update(
    block_out_channels=[32],
    down_block_types=["CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D"],
    attention_head_dim=[2],
    sample_size=8,
  )
  m.vae.update(sample_size=16)
  if sdxl_vae:
    m.vae = dict(
      block_out_channels=[16, 16],
      layers_per_block=1,
      latent_channels=4,
      norm_num_groups=8,
      scaling_factor=0.13025,
      sample_size=16,
    )
    m.unet.update(in_channels=4 + (m.vision.width if m.spatial_features else 0), out_channels=4)
  return c
