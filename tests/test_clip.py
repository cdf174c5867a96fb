"""CLIP against transformers `CLIPModel` (random tiny configs, float32) and the HF export round trip."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

from wegen_jax import convert  # noqa: E402
from wegen_jax.convert.checkpoint_io import CheckpointError  # noqa: E402

CONFIGS = {
  # current HF semantics: pool at the first eos_token_id; exact GELU in the vision tower
  "eos_first": dict(
    text_config=dict(
      vocab_size=99,
      hidden_size=32,
      intermediate_size=37,
      num_hidden_layers=2,
      num_attention_heads=4,
      max_position_embeddings=16,
      eos_token_id=98,
    ),
    vision_config=dict(
      image_size=30,
      patch_size=6,
      hidden_size=24,
      intermediate_size=40,
      num_hidden_layers=2,
      num_attention_heads=3,
      hidden_act="gelu",
    ),
    projection_dim=20,
    logit_scale_init_value=3.0,
  ),
  # legacy OpenAI configs (eos_token_id=2: pool at argmax(input_ids)), quick_gelu, eps 1e-6
  "legacy_argmax": dict(
    text_config=dict(
      vocab_size=64,
      hidden_size=16,
      intermediate_size=24,
      num_hidden_layers=1,
      num_attention_heads=2,
      max_position_embeddings=12,
      eos_token_id=2,
      layer_norm_eps=1e-6,
    ),
    vision_config=dict(
      image_size=16,
      patch_size=4,
      hidden_size=16,
      intermediate_size=20,
      num_hidden_layers=3,
      num_attention_heads=4,
      layer_norm_eps=1e-6,
    ),
    projection_dim=8,
  ),
}


def tiny_clip(name, tmp_path):
  torch.manual_seed(0)
  ref = transformers.CLIPModel(transformers.CLIPConfig(**CONFIGS[name])).eval()
  with torch.no_grad():  # non-trivial norms and biases
    for n, p in ref.named_parameters():
      if "layer_norm" in n or "layrnorm" in n or n.endswith("bias"):
        p.normal_(0.0 if n.endswith("bias") else 1.0, 0.1)
  ref.save_pretrained(tmp_path / "ref")
  return ref


def inputs(cfg, seed=0):
  g = torch.Generator().manual_seed(seed)
  t, v = cfg["text_config"], cfg["vision_config"]
  ids = torch.randint(3, t["vocab_size"] - 1, (3, 9), generator=g)
  eos = t["eos_token_id"] if t["eos_token_id"] != 2 else t["vocab_size"] - 1
  for row, pos in enumerate((8, 4, 6)):
    ids[row, pos] = eos
  mask = torch.ones_like(ids)
  mask[1, 5:] = 0  # right padding after the EOS
  px = torch.randn(2, 3, v["image_size"], v["image_size"], generator=g)
  return ids, mask, px


def features(out):  # transformers 5 returns output objects from get_*_features
  return (out.pooler_output if hasattr(out, "pooler_output") else out).numpy()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_transformers_clip(name, tmp_path):
  ref = tiny_clip(name, tmp_path)
  ids, mask, px = inputs(CONFIGS[name])
  model = convert.load_hf_clip(tmp_path / "ref")
  with torch.no_grad():
    want_t = features(ref.get_text_features(input_ids=ids, attention_mask=mask))
    want_i = features(ref.get_image_features(pixel_values=px))
    want_pooled = ref.vision_model(pixel_values=px).pooler_output.numpy()
    want_out = ref(input_ids=ids, pixel_values=px, attention_mask=mask)
  got_t = np.asarray(model.get_text_features(jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy())))
  got_i = np.asarray(model.get_image_features(jnp.asarray(px.numpy())))
  np.testing.assert_allclose(got_t, want_t, atol=1e-4, rtol=0)
  np.testing.assert_allclose(got_i, want_i, atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(model.vision_model(px.numpy())[1]), want_pooled, atol=1e-4, rtol=0)
  out = model(ids.numpy(), px.numpy(), mask.numpy())
  np.testing.assert_allclose(np.asarray(out.logits_per_image), want_out.logits_per_image.numpy(), atol=1e-4)
  # without a mask (HF: causal only) the padded row still pools at its EOS
  with torch.no_grad():
    want_nomask = features(ref.get_text_features(input_ids=ids))
  np.testing.assert_allclose(np.asarray(model.get_text_features(ids.numpy())), want_nomask, atol=1e-4, rtol=0)


def test_export_round_trip(tmp_path):
  ref = tiny_clip("eos_first", tmp_path)
  ids, mask, px = inputs(CONFIGS["eos_first"])
  convert.save_hf_clip(convert.load_hf_clip(tmp_path / "ref"), tmp_path / "out")
  back = transformers.CLIPModel.from_pretrained(tmp_path / "out").eval()
  with torch.no_grad():
    for a, b in (
      (ref.get_text_features(input_ids=ids), back.get_text_features(input_ids=ids)),
      (ref.get_image_features(pixel_values=px), back.get_image_features(pixel_values=px)),
    ):
      np.testing.assert_allclose(features(b), features(a), atol=1e-6)
    assert float(back.logit_scale) == pytest.approx(3.0)


def test_missing_directory_and_tensor(tmp_path):
  with pytest.raises(CheckpointError, match="config.json"):
    convert.load_hf_clip(tmp_path / "nope")
  ref = tiny_clip("legacy_argmax", tmp_path)
  sd = {k: v.numpy() for k, v in ref.state_dict().items() if k != "visual_projection.weight"}
  from wegen_jax.convert.checkpoint_io import save_state_dict

  save_state_dict(sd, tmp_path / "ref")
  with pytest.raises(CheckpointError, match="visual_projection.weight"):
    convert.load_hf_clip(tmp_path / "ref")
