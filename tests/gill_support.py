"""Shared by the GILL / MGCC tests: the tiny config at test sizes and a model with numpy-drawn weights."""

import math

import numpy as np

from wegen_jax.config_utils import load_config


def tiny_config(mgcc: bool = False, **data):
  """configs/gill.py (or mgcc.py) size=tiny with one LLM layer, a 1+1-layer mapper and captioned images (1-step stories)."""
  c = load_config(f"configs/{'mgcc' if mgcc else 'gill'}.py:size=tiny")
  c.data.update({**dict(steps=1, max_len=80, caption_len=64, max_images=1, num_records=16, num_validation=4), **data})
  c.sampling.batch_size = 1  # predict functions reuse the programs System.generate compiles
  c.model.llm.num_layers = 1  # compile time is most of these tests' time
  c.model.mapper.update(encoder_layers=1, decoder_layers=1)
  return c


def random_gill(cfg, seed=0):
  """A GILL with random weights drawn in numpy (eager init of the UNet op by op takes a minute
  on a busy CPU): kernels ~ N(0, 1/fan_in), norms 1, biases and tables small, GILL's initial
  temperature, gates 0.3 (open, so MGCC's refinement takes part)."""
  import jax.numpy as jnp
  from flax import nnx

  from wegen_jax.systems.gill import GILL

  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: GILL(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)

  def draw(path, var):
    shape, dtype = var.get_value().shape, var.get_value().dtype
    leaf = str(path[-1])
    if leaf == "scale":
      value = np.ones(shape)
    elif leaf == "logit_scale":
      value = np.full(shape, math.log(1 / 0.07))
    elif leaf.startswith(("gate", "alpha")):
      value = np.full(shape, 0.3)
    elif leaf == "kernel":
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    else:  # biases, embeddings, position tables, queries
      value = 0.02 * rng.standard_normal(shape) if leaf == "bias" else 0.5 * rng.standard_normal(shape)
    return var.replace(jnp.asarray(value, dtype))

  state = nnx.from_flat_state([(p, draw(p, v)) for p, v in nnx.to_flat_state(abstract)])
  return nnx.merge(graphdef, state)
