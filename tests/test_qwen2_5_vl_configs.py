"""Qwen2.5-VL parity over configs built in transformers, not by our own `hf_config`: tied and
untied heads, MHA and GQA, odd head and patch sizes, spatial merge 3, temporal patch 1, no
windowed layers, uneven M-RoPE sections. Each: logits with images in a left-padded batch, greedy
decoding, and our export loaded back by transformers (tests/test_qwen2_5_vl.py has the full checks
on one config)."""

import numpy as np
import pytest

from wegen_jax import convert
from wegen_jax.generation import SamplingConfig, generate

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 320
# (text_config, vision_config, tie_word_embeddings)
CONFIGS = {
  "tied_mha_patch3": (
    dict(
      hidden_size=48,
      intermediate_size=80,
      num_hidden_layers=3,
      num_attention_heads=2,
      num_key_value_heads=2,
      rope_scaling=dict(type="mrope", mrope_section=[4, 6, 2]),
      rope_theta=10000.0,
      rms_norm_eps=1e-5,
    ),
    dict(
      depth=3,
      hidden_size=24,
      intermediate_size=40,
      num_heads=3,
      out_hidden_size=48,
      patch_size=3,
      temporal_patch_size=2,
      spatial_merge_size=2,
      window_size=12,
      fullatt_block_indexes=[0],
    ),
    True,
  ),
  "merge3_gqa8to1": (
    dict(
      hidden_size=64,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=8,
      num_key_value_heads=1,
      rope_scaling=dict(type="mrope", mrope_section=[1, 1, 2]),
    ),
    dict(
      depth=2,
      hidden_size=32,
      intermediate_size=32,
      num_heads=4,
      out_hidden_size=64,
      patch_size=2,
      temporal_patch_size=2,
      spatial_merge_size=3,
      window_size=12,
      fullatt_block_indexes=[],
    ),
    False,
  ),
  "temporal1_all_full": (
    dict(
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=1,
      num_attention_heads=2,
      num_key_value_heads=1,
      rope_scaling=dict(type="mrope", mrope_section=[2, 2, 4]),
    ),
    dict(
      depth=2,
      hidden_size=16,
      intermediate_size=32,
      num_heads=1,
      out_hidden_size=32,
      patch_size=4,
      temporal_patch_size=1,
      spatial_merge_size=2,
      window_size=8,
      fullatt_block_indexes=[0, 1],
    ),
    True,
  ),
}


def _hf_model(text, vision, tie):
  torch.manual_seed(0)
  config = transformers.Qwen2_5_VLConfig(
    text_config=dict(vocab_size=VOCAB, tie_word_embeddings=tie, **text),
    vision_config=vision,
    image_token_id=VOCAB - 6,
    video_token_id=VOCAB - 5,
    vision_start_token_id=VOCAB - 4,
    vision_end_token_id=VOCAB - 3,
    tie_word_embeddings=tie,
  )
  model = transformers.Qwen2_5_VLForConditionalGeneration(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.2)  # norms perturbed too; greedy decoding does not repeat one token
  return model, config


def _batch(config, seed=1):
  """Rows: text + image (several windows) + text + image (one merged row) + text; text + a
  two-frame image + text; text only. Left-padded."""
  v, rs = config.vision_config, np.random.RandomState(seed)
  m = v.spatial_merge_size
  win = max(v.window_size // m // v.patch_size, 1)
  grids = np.asarray([(t, h * m, w * m) for t, h, w in [(1, win + 1, 2 * win + 1), (1, 1, 3), (2, 2, 1)]], np.int64)
  image = lambda g: (
    [config.vision_start_token_id] + [config.image_token_id] * int(np.prod(g) // m**2) + [config.vision_end_token_id]
  )
  text = lambda n: list(rs.randint(1, VOCAB - 10, n))
  rows = [text(3) + image(grids[0]) + text(2) + image(grids[1]) + text(2), text(2) + image(grids[2]) + text(3), text(6)]
  width = max(map(len, rows))
  ids, mask = np.zeros((3, width), np.int64), np.zeros((3, width), np.int64)
  for i, r in enumerate(rows):
    ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
  patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size**2
  pixels = rs.randn(int(np.prod(grids, axis=1).sum()), patch_dim).astype(np.float32)
  return ids, mask, pixels, grids


def _hf_inputs(config, ids, mask, pixels, grids):
  t = torch.from_numpy
  # transformers 5 computes M-RoPE only when told which tokens are images (its processor's output)
  types = (ids == config.image_token_id).astype(np.int64)
  return dict(
    input_ids=t(ids),
    attention_mask=t(mask),
    pixel_values=t(pixels),
    image_grid_thw=t(grids),
    mm_token_type_ids=t(types),
  )


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_transformers_config_logits_greedy_and_export(name, tmp_path):
  hf, config = _hf_model(*CONFIGS[name])
  hf.save_pretrained(tmp_path / "hf")
  ours = convert.load_hf_qwen2_5_vl(tmp_path / "hf")
  ids, mask, pixels, grids = _batch(config)
  inputs = _hf_inputs(config, ids, mask, pixels, grids)
  valid = mask.astype(bool)
  with torch.no_grad():
    want = hf(**inputs).logits.numpy()
  got = np.asarray(ours(ids, pixel_values=pixels, image_grid_thw=grids, attention_mask=mask))
  np.testing.assert_allclose(got[valid], want[valid], atol=1e-4)

  with torch.no_grad():
    hf_tokens = hf.generate(
      **inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None
    )
  out = generate(
    ours, ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grids, sampling=SamplingConfig(max_new_tokens=6)
  )
  np.testing.assert_array_equal(np.asarray(out.tokens), hf_tokens[:, ids.shape[1] :].numpy())

  convert.save_hf_qwen2_5_vl(ours, tmp_path / "back")
  back = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "back", dtype=torch.float32).eval()
  assert back.config.tie_word_embeddings == config.tie_word_embeddings
  with torch.no_grad():
    np.testing.assert_allclose(back(**inputs).logits.numpy()[valid], want[valid], atol=1e-5)
