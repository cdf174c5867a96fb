"""WeGen sequences, label masks and image positions on hand-written examples; the tokenizer;
the Grain pipeline on a curated synthetic dataset."""

import ml_collections
import numpy as np
import pytest

from wegen_jax.systems.wegen.sequences import Turn, build_sequence, dynamics_turns
from wegen_jax.systems.wegen.tokenizer import load_tokenizer
from wegen_jax.training.losses import IGNORE_INDEX

Q = 4  # image tokens per image in these tests (WeGen: 64)


@pytest.fixture(scope="module")
def tok():
  return load_tokenizer("")


def test_tiny_tokenizer_round_trips_text_and_has_wegen_tokens(tok, tmp_path):
  text = "the red circle moves to the top left; ünïcode ✓"
  assert tok.decode(tok.encode(text)) == text
  assert tok.token_id("<img>") != tok.token_id("</img>")
  assert len(set(tok.image_token_ids(64))) == 64
  tok.save(tmp_path)
  again = load_tokenizer(tmp_path)
  assert again.encode(text) == tok.encode(text) and again.image_token_ids(64) == tok.image_token_ids(64)
  with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
    load_tokenizer(tmp_path / "missing")


def test_tiny_tokenizer_gives_each_synthetic_word_one_token_and_fits_the_tiny_llm(tok):
  from wegen_jax.configs.wegen import get_config
  from wegen_jax.data import synthetic
  from wegen_jax.systems.wegen.tokenizer import check_vocab

  frames, gt = synthetic.generate_clip(123, synthetic.ClipSpec(num_frames=13))  # not one of the corpus' clips
  texts = [synthetic.caption(gt, 0), synthetic.caption(gt, 12), synthetic.describe(gt, 0, 12)]
  for text in texts:
    words = text.replace(";", " ;").replace(",", " ,").replace(".", " .").split()
    assert len(tok.encode(text)) == len(words), text
  check_vocab(tok, get_config("size=tiny,stage=2").model.llm.vocab_size)
  with pytest.raises(ValueError, match=f"has {tok.vocab_size} ids .*vocab_size is 384: raise"):
    check_vocab(tok, 384)


def test_pair_sequence_layout_and_labels(tok):
  seq = build_sequence(tok, dynamics_turns(["d1"]), num_image_tokens=Q)
  ids, labels = seq.input_ids, seq.labels
  img = tok.image_token_ids(Q)
  expected = (
    [tok.bos_id]
    + tok.encode("[INST] ")
    + [tok.img_start_id]
    + img
    + [tok.img_end_id]
    + tok.encode("d1 [/INST]\n")
    + [tok.img_start_id]
    + img
    + [tok.img_end_id]
    + [tok.eos_id]
  )
  assert ids.tolist() == expected
  # supervised targets: only the response's <img> and </s>
  targets = {t + 1: labels[t] for t in range(len(ids)) if labels[t] != IGNORE_INDEX}
  response_img = len(expected) - Q - 3
  assert targets == {response_img: tok.img_start_id, len(ids) - 1: tok.eos_id}
  # image 0 is the input A, image 1 the generated B; positions point at their <img_i> tokens
  assert seq.image_is_target.tolist() == [False, True]
  for positions in seq.image_token_positions:
    assert ids[positions].tolist() == img
    assert ids[positions[0] - 1] == tok.img_start_id
  assert seq.image_token_positions[1][0] == response_img + 1


def test_multi_step_sequence_is_multi_turn(tok):
  seq = build_sequence(tok, dynamics_turns(["d1", "d2"], caption="a cat", caption_first=True), Q)
  assert seq.image_is_target.tolist() == [True, True, True]  # A from the caption, then B, C
  assert (seq.input_ids == tok.bos_id).sum() == 3 and (seq.input_ids == tok.eos_id).sum() == 3
  text = tok.decode(seq.input_ids)
  assert text.index("a cat") < text.index("d1") < text.index("d2")
  supervised = seq.labels[seq.labels != IGNORE_INDEX].tolist()
  assert supervised == [tok.img_start_id, tok.eos_id] * 3


def test_response_text_is_supervised_prompt_is_not(tok):
  seq = build_sequence(tok, [Turn(user_text="draw", response_text="ok", response_images=1)], Q)
  supervised = seq.labels[seq.labels != IGNORE_INDEX].tolist()
  assert supervised == tok.encode("ok") + [tok.img_start_id, tok.eos_id]


def data_config(**kw):
  return ml_collections.ConfigDict(
    dict(
      dict(
        max_len=96,
        max_images=3,
        num_image_tokens=Q,
        image_size=16,
        vae_image_size=16,
        tokenizer="",
        caption_first=False,
      ),
      **kw,
    )
  )


def fake_record(dynamics, labelled=True, k=2):
  frames = np.random.RandomState(0).randint(0, 255, (k, 20, 20, 3)).astype(np.uint8)
  return {"frames": frames, "dynamics": dynamics, "caption": "c", "labelled": labelled}


def test_examples_pad_to_fixed_shapes_and_invalid_become_empty(tok):
  from wegen_jax.systems.wegen.pipeline import records_to_row

  d = data_config()
  ex = records_to_row([fake_record(["the square turns"])], tok, d)
  t = int(ex["segment_ids"].sum())
  assert ex["input_ids"].shape == (96,) and ex["pixel_values"].shape == (3, 3, 16, 16)
  assert ex["example_valid"] and ex["image_valid"].tolist() == [True, True, False]
  assert (ex["input_ids"][t:] == tok.pad_id).all() and (ex["labels"][t:] == IGNORE_INDEX).all()
  assert ex["vae_pixels"][:2].min() >= -1 and ex["vae_pixels"][:2].max() <= 1
  for bad in (fake_record(["x"], labelled=False), fake_record(["x" * 200])):
    empty = records_to_row([bad], tok, d)
    assert not empty["example_valid"] and empty["segment_ids"].sum() == 0 and not empty["image_valid"].any()


def test_pipeline_batches_from_curated_data(curated_dir, tok):
  import jax
  from wegen_jax.data.loader import DeviceLoader
  from wegen_jax.systems.wegen.pipeline import make_dataset

  config = ml_collections.ConfigDict(
    {"data": dict(data_config(max_len=512, num_image_tokens=64), dir=str(curated_dir))}
  )
  batches = iter(make_dataset(config, "train", seed=0, global_batch=2))
  batch = next(batches)
  assert batch["input_ids"].shape == (2, 512) and batch["pixel_values"].shape == (2, 3, 3, 16, 16)
  assert batch["example_valid"].all()
  for row in range(2):
    n = int(batch["image_valid"][row].sum())
    assert n in (2, 3) and batch["image_is_target"][row, :n].sum() == n - 1
    for positions in batch["image_token_positions"][row, :n]:
      assert batch["input_ids"][row, positions].tolist() == tok.image_token_ids(64)
  # resuming from a saved iterator state continues with the same batches
  sharding = lambda name, x: jax.sharding.SingleDeviceSharding(jax.devices()[0])
  loader = DeviceLoader(make_dataset(config, "train", seed=0, global_batch=2), sharding)
  next(loader)
  state = loader.get_state()
  expected = np.asarray(next(loader)["input_ids"])
  again = DeviceLoader(make_dataset(config, "train", seed=0, global_batch=2), sharding)
  again.set_state(state)
  np.testing.assert_array_equal(np.asarray(next(again)["input_ids"]), expected)


def test_pipeline_packs_consecutive_records_into_one_row(curated_dir, tok):
  from wegen_jax.systems.wegen.pipeline import make_dataset

  d = dict(data_config(max_len=1024, max_images=6, num_image_tokens=64), dir=str(curated_dir), pack=2)
  config = ml_collections.ConfigDict({"data": d})
  batch = next(iter(make_dataset(config, "train", seed=0, global_batch=2)))
  assert batch["input_ids"].shape == (2, 1024)
  assert (batch["examples_packed"] + batch["examples_dropped"]).tolist() == [2, 2]
  assert batch["examples_packed"].sum() >= 3 and batch["segment_ids"].max() == 2


def test_worker_processes_give_the_same_batches_and_resume(curated_dir):
  """data.workers > 0 (Grain worker processes) and data.device_preprocess: the batches, and those
  after a restore of the iterator state, are the single-process ones."""
  import jax
  from wegen_jax.data.loader import DeviceLoader
  from wegen_jax.systems.wegen.pipeline import make_dataset

  sharding = lambda name, x: jax.sharding.SingleDeviceSharding(jax.devices()[0])
  seen = {}
  for workers in (0, 2):
    config = ml_collections.ConfigDict(
      {
        "data": dict(
          data_config(max_len=512, num_image_tokens=64, device_preprocess=True, frame_size=64, workers=workers),
          dir=str(curated_dir),
        )
      }
    )
    loader = DeviceLoader(make_dataset(config, "train", seed=0, global_batch=2), sharding)
    batches = [next(loader) for _ in range(3)]
    state = loader.get_state()
    again = DeviceLoader(make_dataset(config, "train", seed=0, global_batch=2), sharding)
    again.set_state(state)
    batches.append(next(again))
    assert batches[0]["frames"].dtype == np.uint8 and batches[0]["frames"].shape == (2, 3, 64, 64, 3)
    seen[workers] = [{k: np.asarray(v) for k, v in b.items()} for b in batches]
    loader.close(), again.close()
  for single, multi in zip(seen[0], seen[2]):
    for k in single:
      np.testing.assert_array_equal(multi[k], single[k], err_msg=k)
