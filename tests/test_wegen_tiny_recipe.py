"""Where the tiny WeGen recipe departs from the authors' (and 7B does not): the detokenizer's
spatial feature grid, each token over its own block of the latents."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wegen_batches import tiny_config
from wegen_jax.systems.wegen import WeGenConfig
from wegen_jax.systems.wegen.model import WeGen


def _abstract(cfg):
  return nnx.eval_shape(lambda: WeGen(cfg, rngs=nnx.Rngs(0)))


def test_each_token_lands_on_its_grid_block():
  cfg = WeGenConfig.from_dict(tiny_config(stage=1).model)
  assert cfg.spatial_features
  model = _abstract(cfg)
  q, width = cfg.num_image_tokens, cfg.vision.width
  features = jnp.broadcast_to(jnp.arange(q, dtype=jnp.float32)[None, :, None], (2, q, width))
  grid = np.asarray(model.spatial_condition(features, (16, 16)))
  assert grid.shape == (2, width, 16, 16)
  rows, cols = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
  np.testing.assert_array_equal(grid[1, 5], (rows // 2) * 8 + cols // 2)  # row-major, as pooled
  with pytest.raises(ValueError, match="not a multiple"):
    model.spatial_condition(features, (12, 12))


def test_off_is_cross_attention_only_and_a_wrong_unet_is_refused():
  cfg = WeGenConfig.from_dict(tiny_config(stage=1).model)
  off = _abstract(dataclasses.replace(cfg, spatial_features=False))
  assert off.spatial_condition(jnp.zeros((1, cfg.num_image_tokens, cfg.vision.width)), (16, 16)) is None
  with pytest.raises(ValueError, match="in_channels"):
    dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, in_channels=cfg.vae.latent_channels))


def test_the_7b_detokenizer_is_the_authors_cross_attention_only():
  from wegen_jax.configs.wegen import get_config

  real = WeGenConfig.from_dict(get_config("size=7b,stage=1").model)
  assert not real.spatial_features and real.unet.in_channels == real.vae.latent_channels == 4


def test_instruction_slot_puts_each_edited_token_at_one_fixed_offset_from_its_source():
  from wegen_jax.systems.wegen.sequences import Turn, build_sequence, dynamics_turns
  from wegen_jax.systems.wegen.tokenizer import load_tokenizer
  from wegen_jax.training.losses import IGNORE_INDEX

  tok, q, slot = load_tokenizer(""), 4, 64
  records = [
    dynamics_turns(["it moves"]),
    dynamics_turns(["the red circle moves up to the top left", "it turns blue and grows"]),  # triple: two edits
    dynamics_turns(["a square appears"], first_turn=Turn(user_text="a long caption " * 3, response_images=1)),
  ]

  def offsets(s):
    ids = s.input_ids
    pos = s.image_token_positions
    assert all(ids[pos[k]].tolist() == tok.image_token_ids(q) for k in range(len(pos)))
    return {int(d) for k in range(1, len(pos)) for d in pos[k] - pos[k - 1]}

  seqs = [build_sequence(tok, turns, q, slot) for turns in records]
  assert set.union(*map(offsets, seqs)) == {q + slot + 2}  # every edit, every record: one offset
  assert len(set.union(*(offsets(build_sequence(tok, t, q)) for t in records))) > 2  # the authors' layout varies
  for s, turns in zip(seqs, records):  # pads are masked and the text is unchanged
    plain = build_sequence(tok, turns, q)
    pads = s.input_ids == tok.pad_id
    assert (s.labels[pads] == IGNORE_INDEX).all() and s.input_ids[~pads].tolist() == plain.input_ids.tolist()
  text = tok.encode("x" * 80 + " [/INST]\n")  # longer than the slot: kept whole, not cut
  too_long = build_sequence(tok, dynamics_turns(["x" * 80]), q, slot)
  assert len(text) > slot and tok.decode(too_long.input_ids).count("x" * 80) == 1
  assert offsets(too_long) == {q + 1 + len(text) + 1}  # </img>, the text, <img>
