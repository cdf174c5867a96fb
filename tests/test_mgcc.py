"""MGCC on GILL: the layout text format round trip, the refinement module's identity start, and
interleaved generation through System.generate / predict_fns (text, generated image grounded on
boxes, retrieved image), plus retrieval R@k."""

import jax.numpy as jnp
import numpy as np
import pytest

from gill_support import random_gill, tiny_config
from wegen_jax.systems import base
from wegen_jax.systems.gill import grounding
from wegen_jax.systems.gill.generate import recall_at_k, split_prompt
from wegen_jax.systems.gill.system import GILLSystem
from wegen_jax.systems.gill.tokenizer import SDTokenizer


def test_layout_text_round_trip():
  objects = [("red circle", (0.05, 0.1, 0.35, 0.4)), ("striped blue square", (0.6, 0.5, 0.95, 1.0))]
  text = grounding.format_boxes(objects)
  assert text == "red circle (5,10,35,40); striped blue square (60,50,95,100)"
  back = grounding.parse_boxes(text)
  assert [p for p, _ in back] == [p for p, _ in objects]
  np.testing.assert_allclose([b for _, b in back], [b for _, b in objects], atol=1e-9)
  # an LLM's sloppy output: swapped corners sorted, empty boxes and junk dropped, capped at max_boxes
  messy = "Layout: cat (40, 80, 10, 20); ghost (5,5,5,9); nonsense; dog (0,0,300,50); owl (1,1,2,2)"
  assert grounding.parse_boxes(messy, max_boxes=2) == [("cat", (0.1, 0.2, 0.4, 0.8)), ("dog", (0.0, 0.0, 1.0, 0.5))]
  prompt = grounding.layout_prompt("a green star")
  assert prompt.endswith("Scene: a green star\nLayout:") and grounding.EXAMPLE_LAYOUT in prompt
  inputs = grounding.box_inputs(back, 4, SDTokenizer(None, 16))
  assert inputs["masks"].tolist() == [1, 1, 0, 0] and inputs["phrase_ids"].shape == (4, 16)
  assert inputs["boxes"][1].tolist() == pytest.approx([0.6, 0.5, 0.95, 1.0])


def test_synthetic_objects_give_boxes():
  from wegen_jax.data.synthetic import ClipSpec, generate_clip

  frames, gt = generate_clip(3, ClipSpec(num_frames=4))
  objects = grounding.synthetic_objects(gt, 0)
  assert objects and all(0 <= v <= 1 for _, box in objects for v in box)
  assert grounding.parse_boxes(grounding.format_boxes(objects))[0][0] == objects[0][0]


def test_recall_at_k():
  scores = np.array([[0.9, 0.1, 0.0], [0.8, 0.5, 0.1], [0.1, 0.2, 0.3]])
  assert recall_at_k(scores, ks=(1, 2)) == {"R@1": pytest.approx(2 / 3), "R@2": 1.0}


def test_split_prompt_places_images():
  a, b = np.zeros((4, 4, 3), np.uint8), np.ones((4, 4, 3), np.uint8)
  items = split_prompt("first<image>then<image>now", [a, b])
  assert [type(i).__name__ for i in items] == ["str", "ndarray", "str", "ndarray", "str"]
  assert split_prompt("caption", [a])[0] is a
  with pytest.raises(ValueError, match="marks 1"):
    split_prompt("one <image>", [a, b])


@pytest.fixture(scope="module")
def system():
  config = tiny_config(mgcc=True)
  config.sampling.num_steps = 2
  config.sampling.gligen_beta = 0.5  # boxes in the first of the 2 steps
  config.sampling.max_new_tokens = 4
  from wegen_jax.training.task import get_task

  return GILLSystem(config, random_gill(get_task(config).model_config))


def test_refinement_starts_as_identity(system):
  refine = system.model.refine
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.normal(size=(2, 8, 64)), jnp.float32)
  ctx = jnp.asarray(rng.normal(size=(2, 10, 64)), jnp.float32)
  mask = jnp.asarray(np.arange(10)[None] < np.array([[6], [10]]))
  assert np.abs(np.asarray(refine(h, ctx, mask)) - np.asarray(h)).max() > 1e-3  # open gates: it refines
  for layer in refine.layers:
    layer.gate_attn.set_value(jnp.zeros(()))
    layer.gate_ff.set_value(jnp.zeros(()))
  try:
    np.testing.assert_array_equal(np.asarray(refine(h, ctx, mask)), np.asarray(h))  # zero gates: GILL exactly
  finally:
    for layer in refine.layers:
      layer.gate_attn.set_value(jnp.full((), 0.3))
      layer.gate_ff.set_value(jnp.full((), 0.3))


def test_interleaved_generation(system):
  frame = (np.arange(32 * 32 * 3).reshape(32, 32, 3) % 251).astype(np.uint8)
  layout = "red circle (5,5,40,40); blue square (50,50,95,95)"
  requests = [
    base.Request(text="a red circle", images=[frame], options=dict(mode="generate", layout=layout), seed=1),
    base.Request(text="a red circle", images=[frame], options=dict(mode="generate", layout=layout), seed=1),
    base.Request(
      text="a red circle", images=[frame], options=dict(mode="generate", layout="blue square (0,0,30,30)"), seed=1
    ),
    base.Request(text="show me", options=dict(mode="retrieve", candidates=[frame, 255 - frame])),
    base.Request(text="hello", options=dict(mode="text")),
  ]
  gen_a, gen_b, gen_c, ret, txt = system.generate(requests)
  image = gen_a.images[0]
  assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and gen_a.extras["source"] == "generated"
  assert sum(gen_a.extras["decision_probs"]) == pytest.approx(1.0, abs=1e-5)
  np.testing.assert_array_equal(gen_b.images[0], image)  # a seed fixes the image
  assert np.abs(gen_c.images[0].astype(int) - image).max() > 0  # the boxes steer the GLIGEN UNet
  assert ret.extras["source"] == "retrieved" and ret.extras["retrieved_index"] == int(np.argmax(ret.extras["scores"]))
  np.testing.assert_array_equal(ret.images[0], [frame, 255 - frame][ret.extras["retrieved_index"]])
  assert isinstance(txt.text, str) and txt.images == []


def test_predict_fns(system):
  fns = system.predict_fns()
  frame = np.full((32, 32, 3), 90, np.uint8)
  prompts = [
    {"text": "a story<image>and then", "images": [frame]},
    {"text": "a blue square", "layout": "blue square (10,10,60,60)"},
  ]
  first = fns["generate_images"](prompts, rng_seed=3)
  assert len(first) == 2 and all(x.shape == (32, 32, 3) and x.dtype == np.uint8 for x in first)
  np.testing.assert_array_equal(fns["generate_images"](prompts, rng_seed=3)[1], first[1])
  recall = fns["retrieval_recall"]([{"text": f"caption {i}"} for i in range(3)], [frame, 255 - frame, frame // 2])
  scores = system.retrieval_scores([[f"caption {i}"] for i in range(3)], [frame, 255 - frame, frame // 2])
  one = system.retrieval_scores([["caption 2"]], [frame // 2])  # chunking does not change a score
  np.testing.assert_allclose(one[0, 0], scores[2, 2], rtol=1e-5)
  assert set(recall) == {"R@1", "R@5", "R@10"} and recall["R@10"] == 1.0 and 0 <= recall["R@1"] <= 1
