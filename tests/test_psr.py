"""Text-to-image and prompt self-rewriting (PSR): the training turns and their masks, the stage-3 data
mix on curated data, and a tiny model trained on PSR rows whose sampled rewrites give more diverse
images than drawing the short prompt directly."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from wegen_batches import random_model, tiny_config
from wegen_jax.data import synthetic as S
from wegen_jax.systems.base import Request
from wegen_jax.systems.wegen import WeGenConfig
from wegen_jax.systems.wegen.pipeline import make_dataset, pack_example
from wegen_jax.systems.wegen.psr import (
  PSR_PREFIX,
  first_turn,
  first_turn_kind,
  mean_pairwise_distance,
  measure_psr,
  text_faithful,
)
from wegen_jax.systems.wegen.sequences import build_sequence
from wegen_jax.systems.wegen.task import WeGenTask
from wegen_jax.systems.wegen.tokenizer import load_tokenizer
from wegen_jax.training.losses import IGNORE_INDEX

Q = 64
CAPTION = "a striped red circle at the top left and a blue square at the bottom right on a gradient navy background."


@pytest.fixture(scope="module")
def tok():
  return load_tokenizer("")


def test_short_prompt_keeps_the_objects_only():
  _, gt = S.generate_clip(3)
  assert S.short_prompt(S.caption(gt, 0)) == "a red triangle."
  assert S.short_prompt(CAPTION) == "a red circle and a blue square."
  assert S.short_prompt("A dog runs on the beach, at sunset.") == "A dog runs on the beach."


def _supervised(tok, seq):
  return seq.labels[seq.labels != IGNORE_INDEX].tolist()


def test_first_turns_draw_frame_a_from_text_with_seed_x_masks(tok):
  record = dict(caption=CAPTION, dynamics=["the red circle grows."], video_id="v", frame_indices=[0, 5])
  for kind, user in [("caption", CAPTION), ("short", "a red circle and a blue square."), ("psr", None)]:
    turn = first_turn(record, kind)
    seq = build_sequence(tok, [turn], Q)
    text = tok.decode(seq.input_ids)
    assert seq.image_is_target.tolist() == [True]  # A is generated, not an input
    if kind == "psr":
      # the user asks with the short prompt; the detailed caption is the supervised answer
      assert text.index(PSR_PREFIX + "a red circle and a blue square. [/INST]") < text.index(CAPTION)
      assert _supervised(tok, seq) == tok.encode(CAPTION) + [tok.img_start_id, tok.eos_id]
    else:
      assert f"[INST] {user} [/INST]" in text
      assert _supervised(tok, seq) == [tok.img_start_id, tok.eos_id]
  assert first_turn(record, "image") is None and first_turn(dict(record, caption=""), "psr") is None


def test_first_turn_mix_follows_its_weights_and_is_fixed_per_record():
  weights = dict(image=0.25, caption=0.25, short=0.25, psr=0.25)
  records = [dict(video_id=f"clip_{i}", frame_indices=[i, i + 3]) for i in range(2000)]
  kinds = [first_turn_kind(r, weights) for r in records]
  for k in weights:
    assert abs(kinds.count(k) / len(kinds) - 0.25) < 0.04, (k, kinds.count(k))
  assert kinds == [first_turn_kind(r, weights) for r in records]
  assert {first_turn_kind(r, dict(psr=1.0)) for r in records[:50]} == {"psr"}
  with pytest.raises(ValueError, match="unknown kinds"):
    first_turn_kind(records[0], dict(psr=1.0, paint=1.0))


def test_stage3_config_trains_psr_and_text_to_image_rows_from_curated_data(curated_dir, tok):
  from wegen_jax.config_utils import load_config

  c2, c3 = load_config("configs/wegen.py:size=tiny,stage=2"), load_config("configs/wegen.py:size=tiny,stage=3")
  assert c2.data.first_turn.to_dict() == dict(image=0.5, caption=0.5)
  assert c3.data.first_turn.psr > 0 and c3.data.first_turn.short > 0
  d = dict(c3.data.to_dict(), dir=str(curated_dir), image_size=16, vae_image_size=16)
  config = ml_collections.ConfigDict(dict(data=d))
  texts, rows = [], 0
  for batch in make_dataset(config, "train", seed=0, global_batch=4):  # one epoch: 16 records
    rows += batch["input_ids"].shape[0]
    texts += [
      tok.decode(ids, skip_special_tokens=False) for ids, ok in zip(batch["input_ids"], batch["example_valid"]) if ok
    ]
    if rows >= 16:
      break
  assert len(texts) >= 15  # the tiny max_len holds PSR rows too
  psr = [t for t in texts if PSR_PREFIX in t]
  drawn = [t for t in texts if t.index("[/INST]") < t.index("<img>") or PSR_PREFIX in t]
  assert psr and len(drawn) > len(psr), (len(texts), len(psr), len(drawn))
  # a PSR row answers its short prompt with the record's caption, which names the same objects
  prompt = psr[0].split(PSR_PREFIX)[1].split(" [/INST]")[0]
  answer = psr[0].split("[/INST]\n")[1].split("<img>")[0]
  assert text_faithful(answer, prompt) and S.short_prompt(answer) == prompt


# ------------------------------------------------------------------------------ a tiny trained model

SHORT = "a red square."
LAYOUTS = {  # two detailed prompts for one short prompt, each with its own picture
  "a red square at the top left on a black background.": (0, 0),
  "a red square at the bottom right on a white background.": (8, 8),
}


def _picture(caption, corner):
  img = np.full((16, 16, 3), 245 if "white" in caption else 15, np.uint8)
  y, x = corner
  img[y : y + 8, x : x + 8] = S.COLOURS["red"]
  return img


@pytest.fixture(scope="module")
def psr_model(tok):
  """A tiny WeGen (UNet trainable too) fitted for 60 steps to two PSR rows of one short prompt."""
  config = tiny_config(stage=3, max_len=192, max_images=1)
  cfg = WeGenConfig.from_dict(config.model)
  rows = []
  for caption, corner in LAYOUTS.items():
    assert S.short_prompt(caption) == SHORT
    seq = build_sequence(tok, [first_turn(dict(caption=caption), "psr")], Q)
    rows.append(pack_example(seq, _picture(caption, corner)[None], config.data, tok.pad_id))
  batch = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}

  class Task(WeGenTask):
    def trainable(self):
      return nnx.All(nnx.Param, nnx.Any(*(nnx.PathContains(n) for n in ("llm", "input_proj", "output_proj", "unet"))))

  from wegen_jax.training.optim import make_optimizer, make_schedule
  from wegen_jax.training.trainer import build_train_step

  task = Task(config)
  graphdef, params, frozen = nnx.split(random_model(cfg), task.trainable(), ...)
  opt = ml_collections.ConfigDict(dict(config.optimizer, lr=3e-3, warmup_steps=0, total_steps=10_000, weight_decay=0.0))
  tx = make_optimizer(opt)
  step_fn = jax.jit(build_train_step(task, graphdef, tx, 1, make_schedule(opt)))
  opt_state = tx.init(params)
  losses = []
  for step in range(60):
    params, opt_state, metrics = step_fn(params, frozen, opt_state, batch, jax.random.key(step), step)
    losses.append(float(metrics["loss_ce"]))
  config.sampling.psr_max_tokens = 64
  from wegen_jax.systems.wegen.system import WeGenSystem

  return WeGenSystem(config, nnx.merge(graphdef, params, frozen)), losses


def test_psr_samples_rewrites_and_draws_more_diverse_images_than_the_short_prompt(psr_model):
  system, losses = psr_model
  assert losses[-1] < losses[0] / 5, losses[::10]
  n = 6
  on = system.generate([Request(SHORT, num_samples=n, seed=1, options=dict(psr=True))])[0]
  rewrites = on.extras["prompts"]
  print("rewrites", rewrites)
  assert len(on.images) == n and len(rewrites) == n and len(set(rewrites)) > 1  # sampled: different prompts
  scores = measure_psr(system, [SHORT], num_samples=n, seed=1)  # the same request again, and PSR off
  print(scores)
  assert scores["rewrites_faithful"] >= 0.8  # the rewrites keep the red square (sampled text may stray)
  assert scores["diversity_on"] == pytest.approx(
    mean_pairwise_distance(on.images), abs=1e-4
  )  # scores are rounded to 4 places
  assert scores["diversity_on"] > 1.5 * scores["diversity_off"]
