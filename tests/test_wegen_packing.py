"""Packed rows (data.pack): several examples in one row with segment ids give the same losses as
the same examples one per row, because attention, positions and labels stay inside a segment."""

import jax
import jax.numpy as jnp
import numpy as np

from wegen_batches import random_model, tiny_config
from wegen_jax.systems.wegen import WeGenConfig
from wegen_jax.systems.wegen.loss import wegen_loss
from wegen_jax.systems.wegen.pipeline import records_to_row
from wegen_jax.systems.wegen.tokenizer import load_tokenizer


def _record(seed, text):
  frames = np.random.RandomState(seed).randint(0, 255, (2, 24, 24, 3)).astype(np.uint8)
  return {"frames": frames, "dynamics": [text], "caption": "", "labelled": True}


RECORDS = [_record(0, "the red square moves left"), _record(1, "a blue circle falls"), _record(2, "x" * 400)]


def _stack(rows):
  return {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}


def test_pack_layout_segments_positions_and_image_slots():
  tok = load_tokenizer("")
  d = tiny_config(stage=2).data
  d.max_images, d.max_len = 4, 400
  row = records_to_row(RECORDS, tok, d)
  singles = [records_to_row([r], tok, d) for r in RECORDS[:2]]
  lengths = [int((s["segment_ids"] > 0).sum()) for s in singles]
  assert int(row["examples_packed"]) == 2 and int(row["examples_dropped"]) == 1  # the third is too long
  assert row["segment_ids"][: sum(lengths)].tolist() == [1] * lengths[0] + [2] * lengths[1]
  assert row["positions"][lengths[0] : sum(lengths)].tolist() == list(range(lengths[1]))
  assert row["image_valid"].tolist() == [True] * 4 and row["image_is_target"].tolist() == [False, True] * 2
  for slot in range(4):  # every image's tokens point at its own <img_i> run
    assert row["input_ids"][row["image_token_positions"][slot]].tolist() == tok.image_token_ids(64)
  np.testing.assert_array_equal(row["pixel_values"][2:], singles[1]["pixel_values"][:2])


def test_packed_row_gives_the_losses_of_separate_rows():
  config = tiny_config(stage=2)
  d = config.data
  d.max_images, d.max_len = 4, 400
  tok = load_tokenizer("")
  model = random_model(WeGenConfig.from_dict(config.model), seed=2)
  packed = _stack([records_to_row(RECORDS[:2], tok, d)])
  separate = _stack([records_to_row([r], tok, d) for r in RECORDS[:2]])
  loss = jax.jit(lambda b: wegen_loss(model, b, jax.random.key(0), 2)[1])
  a, b = loss(packed), loss(separate)
  for name in ("loss_ce", "loss_mse", "loss_cos"):
    np.testing.assert_allclose(float(a[name]), float(b[name]), rtol=2e-5, err_msg=name)
  # without segment ids the second example would see the first: the losses move
  leaky = dict(packed, segment_ids=jnp.where(packed["segment_ids"] > 0, 1, 0))
  assert abs(float(loss(leaky)["loss_ce"]) - float(b["loss_ce"])) > 1e-4
