"""Qwen2.5-VL vs transformers' Qwen2_5_VLForConditionalGeneration (random tiny float32 model):
M-RoPE positions, logits with images in a padded batch, greedy generation, save/load round trips.

Everything (grids, token ids, windows) is derived from CFG, so other configs check the same way.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wegen_jax import convert
from wegen_jax.convert.hf_qwen2_5_vl import hf_config
from wegen_jax.generation import SamplingConfig, generate
from wegen_jax.layers.paths import param_paths
from wegen_jax.data.qwen_vl_images import qwen_vl_pixels
from wegen_jax.models.qwen2_5_vl import image_tokens, qwen2_5_vl_config, vision_layout

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

_TINY = qwen2_5_vl_config("tiny_qwen_vl")
_V = _TINY.text.vocab_size  # the special tokens at the top of the vocabulary, as in the released model
CFG = _TINY.replace(
  image_token_id=_V - 6, video_token_id=_V - 5, vision_start_token_id=_V - 4, vision_end_token_id=_V - 3
)
NEW_TOKENS = 8


def _grids(cfg):
  """Three image grids (t, h, w in patches): several full and partial windows, one window, and a small one."""
  v = cfg.vision
  m = v.spatial_merge_size
  win = max(v.window_size // m // v.patch_size, 1)
  merged = [(1, win + 1, 2 * win + 1), (1, win, win), (2, 1, 2)]  # t=2: two frames, each its own segment
  return np.asarray([(t, h * m, w * m) for t, h, w in merged], np.int64)


def _batch(cfg, seed=0):
  """Left-padded rows: text + image + text + image + text; text + image + text; text only."""
  rs = np.random.RandomState(seed)
  grids = _grids(cfg)
  image = lambda i: image_tokens(cfg, grids)[i]
  text = lambda n: list(rs.randint(1, min(cfg.image_token_id, cfg.vision_start_token_id) - 1, n))
  rows = [text(3) + image(0) + text(2) + image(1) + text(2), text(2) + image(2) + text(3), text(6)]
  width = max(map(len, rows))
  ids = np.zeros((len(rows), width), np.int64)
  mask = np.zeros_like(ids)
  for i, r in enumerate(rows):
    ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
  pixels = rs.randn(int(np.prod(grids, axis=1).sum()), cfg.vision.patch_dim).astype(np.float32)
  return ids, mask, pixels, grids


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A random HF model (all weights perturbed, norms included) saved by transformers."""
  torch.manual_seed(0)
  config = transformers.Qwen2_5_VLConfig(**{k: v for k, v in hf_config(CFG).items() if k != "architectures"})
  model = transformers.Qwen2_5_VLForConditionalGeneration(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.2)  # large enough that greedy decoding does not repeat one token
  path = tmp_path_factory.mktemp("qwen_vl_hf")
  model.save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def hf_model(hf_dir):
  return transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def ours(hf_dir):
  return convert.load_hf_qwen2_5_vl(hf_dir)


def _hf_inputs(ids, mask, pixels, grids):
  t = lambda a: torch.from_numpy(np.asarray(a))
  return dict(
    input_ids=t(ids),
    attention_mask=t(mask),
    pixel_values=t(pixels),
    image_grid_thw=t(grids),
    mm_token_type_ids=t((ids == CFG.image_token_id).astype(np.int64)),
  )


def _hf_logits(model, batch):
  with torch.no_grad():
    return model(**_hf_inputs(*batch)).logits.numpy()


@nnx.jit(static_argnames=("grid",))
def _forward(model, ids, mask, pixels, grid):
  return model.forward(ids, pixel_values=pixels, image_grid_thw=np.asarray(grid), attention_mask=mask)[:2]


def _our_outputs(model, batch):
  ids, mask, pixels, grids = batch
  out = _forward(model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pixels), tuple(map(tuple, grids)))
  return tuple(map(np.asarray, out))


def _our_logits(model, batch):
  return _our_outputs(model, batch)[0]


def test_window_layout_splits_and_inverts():
  grids = _grids(CFG)
  lay = vision_layout(CFG.vision, grids)
  n = int(np.prod(grids, axis=1).sum())
  np.testing.assert_array_equal(np.sort(lay.patch_order), np.arange(n))  # a permutation
  assert len(np.unique(lay.window_segments)) > len(grids)  # windows really split the images
  assert len(np.unique(lay.full_segments)) == grids[:, 0].sum()
  # every window lies inside one frame
  for w in np.unique(lay.window_segments):
    assert len(np.unique(lay.full_segments[lay.window_segments == w])) == 1


@pytest.mark.parametrize("fullatt", [CFG.vision.fullatt_block_indexes, (0, 3), ()])
def test_scanned_vision_tower_equals_the_loop(fullatt):
  """scan_layers (one block body, the attention kind picked per layer) computes what the loop does,
  wherever the full-attention blocks sit."""
  from wegen_jax.models.qwen2_5_vl import QwenVisionTransformer

  cfg = CFG.vision.replace(depth=5, fullatt_block_indexes=fullatt)
  loop = QwenVisionTransformer(cfg, rngs=nnx.Rngs(0))
  scanned = QwenVisionTransformer(cfg.replace(scan_layers=True), rngs=nnx.Rngs(1))
  nnx.update(scanned, nnx.state(loop))
  grids = _grids(CFG)
  pixels = jnp.asarray(np.random.RandomState(0).randn(int(np.prod(grids, axis=1).sum()), cfg.patch_dim), jnp.float32)
  want, got = np.asarray(loop(pixels, grids)), np.asarray(scanned(pixels, grids))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # the attention kind matters: the same blocks all windowed give other features
  if fullatt:
    windowed = QwenVisionTransformer(cfg.replace(fullatt_block_indexes=()), rngs=nnx.Rngs(1))
    nnx.update(windowed, nnx.state(loop))
    assert np.abs(np.asarray(windowed(pixels, grids)) - want).max() > 1e-3


def test_image_inputs_match_the_processor():
  """Resize (PIL bicubic), normalise and patchify as transformers' Qwen2VLImageProcessor (PIL backend)."""
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

  v = CFG.vision
  factor = v.patch_size * v.spatial_merge_size
  kw = dict(
    patch_size=v.patch_size,
    temporal_patch_size=v.temporal_patch_size,
    merge_size=v.spatial_merge_size,
    min_pixels=(2 * factor) ** 2,
    max_pixels=(6 * factor) ** 2,
  )
  rs = np.random.RandomState(0)
  images = [
    rs.randint(0, 256, (5 * factor + 3, 3 * factor - 1, 3), np.uint8),
    rs.randint(0, 256, (9, 40 * factor, 3), np.uint8),
  ]
  want = Qwen2VLImageProcessorPil(**kw)(images=list(images), return_tensors="np")
  pixels, grid = qwen_vl_pixels(images, **kw)
  np.testing.assert_array_equal(grid, want["image_grid_thw"])
  np.testing.assert_allclose(pixels, want["pixel_values"], atol=1e-5)
  assert pixels.shape == (np.prod(grid, axis=1).sum(), v.patch_dim)


def test_rope_index_matches_transformers(hf_model, ours):
  ids, mask, _, grids = _batch(CFG)
  want_pos, want_delta = hf_model.model.get_rope_index(
    torch.from_numpy(ids),
    mm_token_type_ids=torch.from_numpy((ids == CFG.image_token_id).astype(np.int64)),
    image_grid_thw=torch.from_numpy(grids),
    attention_mask=torch.from_numpy(mask),
  )
  # traced ids and grids (jit) as GoT's training step would pass them
  pos, delta = jax.jit(ours.get_rope_index)(jnp.asarray(ids), jnp.asarray(grids), jnp.asarray(mask))
  np.testing.assert_array_equal(np.asarray(pos), want_pos.numpy())
  np.testing.assert_array_equal(np.asarray(delta), want_delta.numpy())


def test_logits_match_transformers_with_images(hf_model, ours):
  batch = _batch(CFG)
  mask = batch[1].astype(bool)
  want, got = _hf_logits(hf_model, batch), _our_logits(ours, batch)
  assert got.shape == want.shape and got.dtype == np.float32
  err = np.abs(got - want)[mask].max()
  assert err <= 1e-4, err
  # the image features matter: other pixels change the logits after the images
  other = (batch[0], batch[1], batch[2] + 1.0, batch[3])
  assert np.abs(_our_logits(ours, other) - got)[mask].max() > 1e-3


def test_forward_returns_hidden_states(ours):
  batch = _batch(CFG)
  logits, hidden = _our_outputs(ours, batch)
  assert hidden.shape == batch[0].shape + (CFG.text.hidden_size,)
  lm = ours.language_model
  head = lm.embed.attend if lm.lm_head is None else lm.lm_head
  np.testing.assert_allclose(np.asarray(head(jnp.asarray(hidden))), logits, atol=1e-4)


def test_greedy_generation_matches_transformers(hf_model, ours):
  ids, mask, pixels, grids = _batch(CFG, seed=1)
  with torch.no_grad():
    want = hf_model.generate(
      **_hf_inputs(ids, mask, pixels, grids),
      max_new_tokens=NEW_TOKENS,
      min_new_tokens=NEW_TOKENS,
      do_sample=False,
      pad_token_id=0,
      eos_token_id=None,
      return_dict_in_generate=True,
      output_logits=True,
    )
  out = generate(
    ours,
    ids,
    attention_mask=mask,
    pixel_values=pixels,
    image_grid_thw=grids,
    sampling=SamplingConfig(max_new_tokens=NEW_TOKENS),
  )
  np.testing.assert_array_equal(np.asarray(out.tokens), want.sequences[:, ids.shape[1] :].numpy())
  # each step's logits too (the M-RoPE positions continue with transformers' rope_deltas)
  lm = ours.language_model
  head = lm.embed.attend if lm.lm_head is None else lm.lm_head
  logits = np.asarray(head(out.hidden_states))
  np.testing.assert_allclose(logits, torch.stack(want.logits, 1).numpy(), atol=1e-4)


def test_save_loads_in_transformers_and_back(ours, hf_model, tmp_path):
  convert.save_hf_qwen2_5_vl(ours, tmp_path)
  # transformers saves the released layout (`visual.`, `model.layers.`) that `ours` was loaded from;
  # we write transformers 5's (`model.visual.`, `model.language_model.`): both key layouts load
  assert "model.language_model.embed_tokens.weight" in convert.read_state_dict(tmp_path)
  reloaded_hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32).eval()
  batch = _batch(CFG, seed=2)
  mask = batch[1].astype(bool)
  np.testing.assert_allclose(_hf_logits(reloaded_hf, batch)[mask], _hf_logits(hf_model, batch)[mask], atol=1e-5)
  back = convert.load_hf_qwen2_5_vl(tmp_path)
  a, b = param_paths(ours), param_paths(back)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k].get_value()), np.asarray(b[k].get_value()), err_msg=k)


def test_missing_files_and_bad_inputs_are_clear(ours, tmp_path):
  with pytest.raises(convert.CheckpointError, match=str(tmp_path)):
    convert.load_hf_qwen2_5_vl(tmp_path)
  ids, mask, pixels, grids = _batch(CFG)
  fewer = ids.copy()
  fewer[0, np.argmax(ids[0] == CFG.image_token_id)] = 1
  with pytest.raises(ValueError, match="image-pad tokens"):
    ours.forward(fewer, pixel_values=pixels, image_grid_thw=grids, attention_mask=mask)
  with pytest.raises(ValueError, match="patches"):
    ours.forward(ids, pixel_values=pixels[1:], image_grid_thw=grids, attention_mask=mask)


def test_sharded_2x2x2_same_logits(hf_dir, ours):
  from wegen_jax.parallel import activation_sharding, make_mesh

  params = param_paths(ours)
  assert all(len(v.get_metadata()["logical_axes"]) == v.get_value().ndim for v in params.values())
  mesh = make_mesh(dict(data=2, fsdp=2, tensor=2))
  sharded = convert.load_hf_qwen2_5_vl(hf_dir, mesh=mesh)  # each tensor straight to its sharding
  spec = param_paths(sharded)["visual.blocks.0.attn.q.kernel"].get_value().sharding.spec
  assert any(s is not None for s in spec), spec  # the vision tower is sharded too
  batch = _batch(CFG, seed=3)
  with activation_sharding(mesh):
    got = _our_logits(sharded, batch)
  mask = batch[1].astype(bool)
  np.testing.assert_allclose(got[mask], _our_logits(ours, batch)[mask], atol=1e-4)


# Qwen/Qwen2.5-VL-3B-Instruct's released config.json (transformers 4.x layout).
RELEASED_3B = {
  "architectures": ["Qwen2_5_VLForConditionalGeneration"],
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "vision_start_token_id": 151652,
  "vision_end_token_id": 151653,
  "vision_token_id": 151654,
  "image_token_id": 151655,
  "video_token_id": 151656,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "intermediate_size": 11008,
  "max_position_embeddings": 128000,
  "max_window_layers": 70,
  "model_type": "qwen2_5_vl",
  "num_attention_heads": 16,
  "num_hidden_layers": 36,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 32768,
  "tie_word_embeddings": True,
  "torch_dtype": "bfloat16",
  "use_sliding_window": False,
  "vision_config": {
    "depth": 32,
    "hidden_act": "silu",
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_chans": 3,
    "out_hidden_size": 2048,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "spatial_patch_size": 14,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
    "temporal_patch_size": 2,
  },
  "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
  "vocab_size": 151936,
}


def test_3b_preset_is_the_released_model():
  from wegen_jax.convert.hf_qwen2_5_vl import config_from_hf
  from wegen_jax.models.qwen2_5_vl import Qwen2_5_VL

  cfg = qwen2_5_vl_config("qwen2_5_vl_3b")
  assert config_from_hf(RELEASED_3B) == cfg
  assert config_from_hf(hf_config(cfg)) == cfg
  small = qwen2_5_vl_config("qwen2_5_vl_3b", text=dict(num_layers=2), vision=dict(depth=3, fullatt_block_indexes=(2,)))
  assert (small.text.num_layers, small.vision.depth, small.text.hidden_size) == (2, 3, cfg.text.hidden_size)
  # same parameter count as transformers' model of that config (built on the meta device)
  with torch.device("meta"):
    theirs = transformers.Qwen2_5_VLForConditionalGeneration(
      transformers.Qwen2_5_VLConfig(**{k: v for k, v in RELEASED_3B.items() if k != "architectures"})
    )
  abstract = nnx.eval_shape(lambda: Qwen2_5_VL(cfg, rngs=nnx.Rngs(0)))
  ours = sum(int(np.prod(v.get_value().shape)) for v in param_paths(abstract).values())
  assert ours == sum(p.numel() for p in theirs.parameters())
