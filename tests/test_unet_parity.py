"""UNet2DConditionModel vs diffusers: noise prediction, export round trip, widened conv_in, errors."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from tests.test_diffusion_refs import (
  PARITY_CONFIGS,
  UNET_CONFIGS,
  diffusers_unet,
  perturb,  # noqa: E402
  run_diffusers_unet,
  unet_inputs,
)
from wegen_jax import convert  # noqa: E402
from wegen_jax.convert.checkpoint_io import CheckpointError  # noqa: E402
from wegen_jax.models.unet import widen_conv_in  # noqa: E402


@nnx.jit
def _forward(unet, x, t, ctx, added):
  return unet(x, t, ctx, added)


def ours(unet, x, t, ctx, added=None):
  added = None if added is None else {k: jnp.asarray(v) for k, v in added.items()}
  return np.asarray(_forward(unet, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx), added))


@pytest.fixture(scope="module", params=PARITY_CONFIGS)
def pair(request, tmp_path_factory):
  ref = diffusers_unet(request.param)
  path = tmp_path_factory.mktemp(request.param)
  ref.save_pretrained(path)
  return ref, convert.load_diffusers_unet(path)


def test_noise_prediction_matches(pair):
  ref, unet = pair
  args = unet_inputs(ref)
  want = run_diffusers_unet(ref, *args)
  assert np.abs(want).max() > 0.1  # a live output, not a degenerate one
  np.testing.assert_allclose(ours(unet, *args), want, atol=1e-4, rtol=0)


def test_export_round_trip(pair, tmp_path):
  ref, unet = pair
  convert.save_diffusers_unet(unet, tmp_path)
  back = diffusers.UNet2DConditionModel.from_pretrained(tmp_path).eval()
  args = unet_inputs(ref, seed=1)
  np.testing.assert_allclose(run_diffusers_unet(back, *args), run_diffusers_unet(ref, *args), atol=1e-5, rtol=0)
  sd_ref, sd_back = ref.state_dict(), back.state_dict()
  assert sorted(sd_ref) == sorted(sd_back)


# Less common options of UNet2DConditionModel, several per model to keep the test short.
VARIANTS = {
  "mid_resnet_only": dict(
    mid_block_type="UNetMidBlock2D", mid_block_scale_factor=1.3, resnet_out_scale_factor=0.7, act_fn="mish"
  ),
  "no_mid_block": dict(
    mid_block_type=None,
    conv_in_kernel=1,
    conv_out_kernel=5,
    flip_sin_to_cos=False,
    freq_shift=1,
    center_input_sample=True,
    time_embedding_act_fn="silu",
    time_embedding_dim=24,
  ),
  "per_block_lists": dict(
    layers_per_block=[1, 2],
    attention_head_dim=[2, 4],
    upcast_attention=True,
    downsample_padding=0,
    in_channels=3,
    out_channels=5,
    sample_size=12,
  ),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_config_variants_match_and_round_trip(variant, tmp_path):
  torch.manual_seed(0)
  ref = perturb(diffusers.UNet2DConditionModel(**dict(UNET_CONFIGS["tiny"], **VARIANTS[variant])))
  ref.save_pretrained(tmp_path / "in")
  unet = convert.load_diffusers_unet(tmp_path / "in")
  args = unet_inputs(ref)
  want = run_diffusers_unet(ref, *args)
  np.testing.assert_allclose(ours(unet, *args), want, atol=1e-4, rtol=0)
  convert.save_diffusers_unet(unet, tmp_path / "out")
  back = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "out").eval()
  np.testing.assert_allclose(run_diffusers_unet(back, *args), want, atol=1e-5, rtol=0)


def test_widened_conv_in(tmp_path):
  """GoT: conv_in 4 -> 12 with zero new channels keeps the output; export loads with in_channels=12."""
  ref = diffusers_unet("sdxl")
  ref.save_pretrained(tmp_path / "base")
  unet = convert.load_diffusers_unet(tmp_path / "base")
  x, t, ctx, added = unet_inputs(ref)
  base = ours(unet, x, t, ctx, added)
  widen_conv_in(unet, 12)
  assert unet.cfg.in_channels == 12 and unet.conv_in.kernel.shape == (3, 3, 12, 32)
  extra = np.random.RandomState(5).randn(x.shape[0], 8, *x.shape[2:]).astype(np.float32)
  x12 = np.concatenate([x, extra], axis=1)
  np.testing.assert_allclose(ours(unet, x12, t, ctx, added), base, atol=1e-5, rtol=0)
  # Train-like change to the new channels, then diffusers must agree on the 12-channel model.
  unet.conv_in.kernel.set_value(unet.conv_in.kernel[...].at[:, :, 4:].set(0.05))
  convert.save_diffusers_unet(unet, tmp_path / "wide")
  assert json.loads((tmp_path / "wide" / "config.json").read_text())["in_channels"] == 12
  back = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "wide").eval()
  np.testing.assert_allclose(
    ours(unet, x12, t, ctx, added), run_diffusers_unet(back, x12, t, ctx, added), atol=1e-4, rtol=0
  )


def test_errors_name_the_problem(tmp_path):
  with pytest.raises(CheckpointError, match="config.json"):
    convert.load_diffusers_unet(tmp_path)
  ref = diffusers_unet("sd15")
  ref.save_pretrained(tmp_path)
  cfg = json.loads((tmp_path / "config.json").read_text())
  cfg["cross_attention_dim"] = 20
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError, match=r"attn2\.to_k\.weight"):
    convert.load_diffusers_unet(tmp_path)
  cfg.update(
    cross_attention_dim=24,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=68,
  )
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError, match=r"lacks 4 tensor.*add_embedding\.linear_1"):
    convert.load_diffusers_unet(tmp_path)


def test_text_time_needs_added_cond_kwargs(pair):
  ref, unet = pair
  if unet.cfg.addition_embed_type != "text_time":
    pytest.skip("no text_time embedding")
  x, t, ctx, _ = unet_inputs(ref)
  with pytest.raises(ValueError, match="text_embeds"):
    unet(jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx))


def test_cli_round_trip(tmp_path):
  """diffusers -> wegen_jax native checkpoint -> diffusers, through `python -m wegen_jax.convert`."""
  from wegen_jax.convert.cli import main
  from tests.test_diffusion_refs import diffusers_vae

  for kind, ref, cls in (
    ("unet", diffusers_unet("sdxl"), diffusers.UNet2DConditionModel),
    ("vae", diffusers_vae(), diffusers.AutoencoderKL),
  ):
    ref.save_pretrained(tmp_path / kind)
    assert main([f"diffusers-{kind}", "--src", str(tmp_path / kind), "--out", str(tmp_path / f"{kind}_jax")]) == 0
    assert (
      main(
        [f"jax-to-diffusers-{kind}", "--src", str(tmp_path / f"{kind}_jax"), "--out", str(tmp_path / f"{kind}_back")]
      )
      == 0
    )
    back = cls.from_pretrained(tmp_path / f"{kind}_back").state_dict()
    assert sorted(back) == sorted(ref.state_dict())
    for k, v in ref.state_dict().items():
      np.testing.assert_array_equal(back[k].numpy(), v.numpy(), err_msg=k)
  assert main(["diffusers-unet", "--src", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2


def test_blocked_attention_matches_reference():
  """The CPU attention (per-head slices, custom backward) equals the XLA reference, values and grads."""
  from wegen_jax.layers import blocked_attention, dot_product_attention

  rng = np.random.RandomState(0)
  q = jnp.asarray(rng.randn(2, 12, 4, 8).astype(np.float32))
  k = jnp.asarray(rng.randn(2, 7, 2, 8).astype(np.float32))  # cross-attention, GQA 4 -> 2
  v = jnp.asarray(rng.randn(2, 7, 2, 8).astype(np.float32))
  for fn_kw in ({}, {"scale": 0.3}):
    loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v, **fn_kw)))
    np.testing.assert_allclose(
      np.asarray(blocked_attention(q, k, v, **fn_kw)), np.asarray(dot_product_attention(q, k, v, **fn_kw)), atol=1e-6
    )
    got = jax.grad(loss(blocked_attention), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(dot_product_attention), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
      np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5)
  causal = blocked_attention(q, q, q, causal=True)  # masked cases use the reference
  np.testing.assert_allclose(np.asarray(causal), np.asarray(dot_product_attention(q, q, q, causal=True)), atol=1e-6)
