"""GoT (systems/got): the 4-branch guidance against its formula, the zero-widened conv_in, the chain's
editable structure (round trips, a moved box moves its canvas, box IoU), the whole generate on a
tiny random model (chain written, then drawn; an edited chain drawn without writing one), and a
tiny GoT overfitting a fixed batch (chain CE and diffusion loss both fall)."""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from wegen_jax.diffusion.guidance import split_branches
from wegen_jax.models.unet import UNet2DConditionModel, widen_conv_in
from wegen_jax.systems.base import Request
from wegen_jax.systems.got import GoTConfig, System
from wegen_jax.systems.got.chain import Chain, ChainObject, box_canvases, box_iou, chain_box_iou, parse_chain
from wegen_jax.systems.got.config import GUIDANCE
from wegen_jax.systems.got.data import encode_example, frame_chain, synthetic_example
from wegen_jax.systems.got.generate import gen_hidden_states
from wegen_jax.systems.got.model import GoT
from wegen_jax.systems.got.task import GoTTask, is_trainable
from wegen_jax.systems.got.tokenizer import load_tokenizer

CHAIN = (
  "The scene shows <|object_ref_start|>a red square<|object_ref_end|><|box_start|>(100,120),(400,380)<|box_end|> (red) "
  "and <|box_start|>(600,50),(900,300)<|box_end|> (blue) on gray."
)


def tiny_config(max_len=288):
  """configs/got.py tiny, shrunk for test speed: one-level UNet, 16-px images (8x8x12 latents)."""
  from wegen_jax.configs.got import get_config

  c = get_config("size=tiny,stage=1")
  c.model.lora_rank = 8  # the 3B's path: LoRA on the LLM (the tiny default trains the whole LLM)
  c.model.llm.short_conv = 0  # exports to transformers' layout (the tiny default's convolutions do not)
  c.data.update(max_len=max_len, image_size=16, max_boxes=2)
  c.model.unet.update(
    block_out_channels=[32],
    down_block_types=["CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D"],
    attention_head_dim=[2],
    sample_size=8,
  )
  c.model.vae.update(sample_size=16)
  c.sampling.update(num_steps=2, max_new_tokens=6)
  return c


@functools.lru_cache(maxsize=2)
def _abstract(cfg):
  return nnx.split(nnx.eval_shape(lambda: GoT(cfg, rngs=nnx.Rngs(0))))


def random_model(cfg, seed=0):
  """A GoT with numpy-drawn random weights (eager init of the UNet takes long on a busy CPU);
  LoRA B stays zero, as a fresh wrap."""
  graphdef, abstract = _abstract(cfg)
  rng = np.random.default_rng(seed)

  def draw(path, var):
    shape, dtype, leaf = var.get_value().shape, var.get_value().dtype, str(path[-1])
    if leaf == "scale":
      value = np.ones(shape)
    elif leaf == "lora_b":
      value = np.zeros(shape)
    elif leaf == "bias":
      value = 0.02 * rng.standard_normal(shape)
    elif leaf in ("kernel", "lora_a"):
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    else:
      value = 0.02 * rng.standard_normal(shape)
    return var.replace(jnp.asarray(value, dtype))

  state = nnx.from_flat_state([(p, draw(p, v)) for p, v in nnx.to_flat_state(abstract)])
  return nnx.merge(graphdef, state)


def short_examples(n=2):
  """Hand-written short T2I and editing examples (synthetic ones run ~500 byte-level tokens)."""
  out = []
  for i in range(n):
    img = np.zeros((16, 16, 3), np.uint8)
    img[2 + i : 8 + i, 3:9] = (220, 30, 30)
    chain = parse_chain(f"a <|box_start|>({120 + 60 * i},{100}),({560},{500 + 30 * i})<|box_end|> (red) on black.")
    source = None if i % 2 == 0 else np.roll(img, 4, axis=1)
    out.append({"text": f"red {i}", "edit": source is not None, "chain": chain, "target": img, "source": source})
  return out


def make_batch(config, n=2):
  tok = load_tokenizer("")
  d = config.data
  cfg = GoTConfig.from_dict(config.model)
  rows = [
    encode_example(tok, ex, max_len=d.max_len, image_size=d.image_size, max_boxes=d.max_boxes, model_cfg=cfg)
    for ex in short_examples(n)
  ]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


@pytest.fixture(scope="module")
def setup():
  config = tiny_config()
  cfg = GoTConfig.from_dict(config.model)
  return config, cfg, random_model(cfg)


# ----------------------------------------------------------------------------------------- guidance


def test_guidance_is_the_papers_formula():
  rng = np.random.default_rng(0)
  eps = rng.standard_normal((4 * 3, 2, 5, 5)).astype(np.float32)  # [cond, text, image, uncond] x B=3
  for mode, (a_t, a_s, a_r) in {"t2i": (7.5, 4.0, 0.0), "edit": (4.0, 3.0, 1.5)}.items():
    e_c, e_t, e_i, e_u = eps[:3], eps[3:6], eps[6:9], eps[9:]
    want = e_u + a_t * (e_t - e_i) + a_s * (e_c - e_t) + a_r * (e_i - e_u)
    got = GUIDANCE[mode].combine(split_branches(jnp.asarray(eps), 4))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5, err_msg=mode)


def test_zero_widened_conv_in_is_the_four_channel_unet(setup):
  _, cfg, _ = setup
  base_cfg = cfg.unet.replace(in_channels=cfg.vae.latent_channels)
  unet = nnx.eval_shape(lambda: UNet2DConditionModel(base_cfg, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(1)
  for _, var in nnx.to_flat_state(nnx.state(unet, nnx.Param)):
    shape = var.get_value().shape
    var.set_value(jnp.asarray(rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]) or 1), jnp.float32))
  lc = cfg.vae.latent_channels
  x = jnp.asarray(rng.standard_normal((2, lc, 8, 8)), jnp.float32)
  extra = jnp.asarray(rng.standard_normal((2, 2 * lc, 8, 8)), jnp.float32)
  ctx = jnp.asarray(rng.standard_normal((2, 64, cfg.llm.hidden_size)), jnp.float32)
  added = {
    "text_embeds": jnp.ones((2, cfg.pooled_dim)),
    "time_ids": jnp.tile(jnp.asarray([[16.0, 16, 0, 0, 16, 16]]), (2, 1)),
  }
  t = jnp.asarray([10, 500])
  fwd = nnx.jit(lambda m, *a: m(*a))
  want = np.asarray(fwd(unet, x, t, ctx, added))
  widen_conv_in(unet, 3 * lc)
  assert unet.cfg.in_channels == 3 * lc and not np.asarray(unet.conv_in.kernel[...][:, :, lc:]).any()
  np.testing.assert_array_equal(np.asarray(fwd(unet, jnp.concatenate([x, extra], 1), t, ctx, added)), want)


# -------------------------------------------------------------------------------------------- chain


def test_chain_round_trips_and_edits():
  chain = parse_chain(CHAIN)
  assert chain.text() == CHAIN
  assert [o.phrase for o in chain.objects] == ["a red square", None]
  assert chain.objects[0].box == (100, 120, 400, 380) and chain.objects[1].colour == "blue"
  assert Chain.from_dict(chain.to_dict()).text() == CHAIN
  tok = load_tokenizer("")
  assert tok.decode(tok.encode(CHAIN)) == CHAIN  # the model's tokens give the same text back
  chain.objects[0] = chain.objects[0].moved(300, 0)
  chain.objects[1].colour = "green"
  edited = chain.text()
  assert "(400,120),(700,380)" in edited and "(green)" in edited and parse_chain(edited).text() == edited
  assert parse_chain("no boxes here").text() == "no boxes here"


def test_moving_a_box_moves_its_canvas():
  obj = parse_chain(CHAIN).objects[0]
  before = box_canvases([obj], 20, 20)[0]
  after = box_canvases([obj.moved(500, 0)], 20, 20)[0]
  red = lambda c: np.argwhere((c[0] > 0.5) & (c[1] < -0.5))
  assert red(before).size and red(after).size
  np.testing.assert_array_equal(red(after)[:, 0], red(before)[:, 0])  # same rows
  np.testing.assert_array_equal(red(after)[:, 1], red(before)[:, 1] + 10)  # 500/1000 of 20 px right
  assert box_canvases([], 4, 4).shape == (1, 3, 4, 4) and (box_canvases([], 4, 4) == -1).all()  # one black canvas


def test_chain_box_iou():
  truth = parse_chain(CHAIN)
  assert box_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0 and box_iou((0, 0, 9, 9), (10, 10, 19, 19)) == 0.0
  assert abs(box_iou((0, 0, 9, 9), (5, 0, 14, 9)) - 50 / 150) < 1e-9
  assert chain_box_iou(truth, truth) == {"mean_iou": 1.0, "recall@0.5": 1.0, "count_error": 0.0}
  shifted = parse_chain(CHAIN)
  shifted.objects[0] = shifted.objects[0].moved(0, 1000)  # clipped to the bottom edge: no overlap
  score = chain_box_iou(shifted, truth)
  assert score["mean_iou"] == 0.5 and score["recall@0.5"] == 0.5
  missing = Chain(["only ", " left"], [truth.objects[1]])
  assert chain_box_iou(missing, truth) == {"mean_iou": 0.5, "recall@0.5": 0.5, "count_error": 1.0}


def test_a_moved_object_names_its_new_place():
  obj = ChainObject("a striped red circle at the centre", (400, 400, 600, 600), "red")
  assert obj.moved(-300, -300).phrase == "a striped red circle at the top left"
  assert obj.moved(350, 0).phrase == "a striped red circle at the right"
  assert obj.moved(10, 0).phrase == obj.phrase  # still the centre's ninth
  assert ChainObject("a red blob", (0, 0, 10, 10), "red").moved(500, 500).phrase == "a red blob"


def test_synthetic_chains_hold_the_ground_truth_boxes():
  ex = synthetic_example(3, seed=0, size=64, edit_fraction=0.0)
  assert not ex["edit"] and ex["source"] is None and parse_chain(ex["chain"].text()).text() == ex["chain"].text()
  assert ex["chain"].objects, "a synthetic scene has at least one visible object"
  for obj in ex["chain"].objects:  # each box covers pixels of its object's colour
    x1, y1, x2, y2 = (int(v * 64 / 1000) for v in obj.box)
    patch = ex["target"][y1 : y2 + 1, x1 : x2 + 1].reshape(-1, 3).astype(int)
    assert patch.size and obj.colour in obj.phrase
  edit = synthetic_example(0, seed=0, size=64, edit_fraction=1.0)
  assert edit["edit"] and edit["source"].shape == (64, 64, 3) and edit["chain"].text().startswith("After the edit: ")
  # a chain is its frame's caption with a box and colour after each object phrase: writing it from
  # a caption is copying the caption's words (docs/GOT.md)
  for i in range(8):
    ex = synthetic_example(i, seed=1, size=64, edit_fraction=0.0)
    plain = re.sub(r"<\|box_start\|>.*?<\|box_end\|> \(\w+\)", "", ex["chain"].text())
    assert plain.replace("<|object_ref_start|>", "").replace("<|object_ref_end|>", "") == ex["text"]
  assert frame_chain({"frames": [{"scene": 0, "objects": []}], "scenes": [{"background": "gray"}]}, 0, 64).objects == []


# --------------------------------------------------------------------------------------- generation


def test_generate_chain_then_image_and_edited_chain(setup):
  config, cfg, model = setup
  system = System(config, model)
  t2i = system.generate([Request("a red square")])[0]
  assert t2i.images[0].shape == (16, 16, 3) and t2i.images[0].dtype == np.uint8
  assert parse_chain(t2i.text).text() == t2i.text
  source = np.full((16, 16, 3), 128, np.uint8)
  only = system.generate([Request("move it", images=(source,), options={"only_chain": True})])[0]
  assert only.images == [] and "chain" in only.extras
  edited = parse_chain(CHAIN)
  a = system.generate([Request("move it", images=(source,), options={"chain": edited.to_dict()}, seed=1)])[0]
  edited.objects[0] = edited.objects[0].moved(400, 400)
  b = system.generate([Request("move it", images=(source,), options={"chain": edited}, seed=1)])[0]
  assert a.text == CHAIN and b.text == edited.text()
  assert np.abs(a.images[0].astype(int) - b.images[0].astype(int)).max() > 0  # the box steers the image
  # editing prompts carry the source at <|image_pad|> tokens: the MLLM's hidden states see it
  prompt = system.prompt(Request("move it", images=(source,)))
  assert prompt.count("<|image_pad|>") == cfg.vision_tokens == 16
  h = [
    np.asarray(gen_hidden_states(model, system.tokenizer, [prompt], [CHAIN], [img])) for img in (source, 255 - source)
  ]
  assert np.abs(h[0] - h[1]).max() > 1e-4


# ------------------------------------------------------------------------------------------ training


def test_trainable_groups():
  assert is_trainable("llm.layers.0.attn.q.lora_a") and is_trainable("llm.layers.0.mlp.down.lora_b")
  assert is_trainable("llm.embed.embedding") and is_trainable("llm.layers.1.attn_norm.scale")
  assert is_trainable("llm.final_norm.scale") and is_trainable("unet.conv_in.kernel")
  assert is_trainable("semantic.kernel") and is_trainable("pooled.bias")
  assert not is_trainable("llm.layers.0.attn.q.base.kernel") and not is_trainable("llm.layers.0.attn.q.base.bias")
  assert not is_trainable("vae.encoder.conv_in.kernel")


def test_tiny_got_overfits_a_fixed_batch(setup):
  config, cfg, _ = setup
  task = GoTTask(config)
  model = random_model(cfg, seed=3)
  batch = jax.tree.map(jnp.asarray, make_batch(config))
  graphdef, params, frozen = nnx.split(model, task.trainable(), ...)
  assert not any("base" in ".".join(map(str, p)) for p, _ in nnx.to_flat_state(params))
  tx = optax.adam(3e-3, b1=0.9, b2=0.98, eps=1e-6)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, key):
    loss_of = lambda p: task.loss_fn(nnx.merge(graphdef, p, frozen), batch, key)
    (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, metrics, grads

  history = []
  for i in range(40):
    # a fixed key for the diffusion noise and drops: the batch and its noise are the same each step
    params, opt, metrics, grads = step(params, opt, jax.random.key(0))
    history.append({k: float(v) for k, v in metrics.items()})
    if i == 0:  # the diffusion loss reaches the MLLM's LoRA (B starts at zero, A does not)
      flat = {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads)}
      assert np.abs(flat["llm.layers.0.attn.q.lora_b"]).max() > 0
      assert np.abs(flat["semantic.kernel"]).max() > 0
  first, last = history[0], history[-1]
  assert last["loss_ce"] < 0.3 * first["loss_ce"], history[::10]
  assert last["loss_diffusion"] < 0.5 * first["loss_diffusion"], history[::10]


def test_one_encoder_pass_gives_the_three_latents_of_separate_passes(setup):
  """The training step encodes target, source and box canvases in one VAE pass; each result
  equals its own pass (with the encoder sliced as GoT-3B's config does, too)."""
  config, cfg, model = setup
  batch = {k: jnp.asarray(v) for k, v in make_batch(config, 2).items()}
  key = jax.random.key(3)
  for slices in (1, 2):
    model.cfg = dataclasses.replace(cfg, vae_encode_slices=slices)
    latents, reference, spatial = model.training_latents(
      batch["target"], batch["source"], batch["canvases"], batch["canvas_valid"], key
    )
    np.testing.assert_allclose(latents, model.target_latents(batch["target"], key), atol=1e-6)
    np.testing.assert_allclose(reference, model.condition_latents(batch["source"]), atol=1e-6)
    want = model.spatial_latents(batch["canvases"], batch["canvas_valid"])
    np.testing.assert_allclose(spatial, want, atol=1e-6)
  model.cfg = cfg
