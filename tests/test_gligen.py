"""GLIGEN in our UNet (UNetConfig.attention_type="gated") vs diffusers' gated UNet on random weights:
noise prediction with boxes, the position net alone, diffusers folder import and export back."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from tests.test_diffusion_refs import UNET_CONFIGS, perturb, run_diffusers_unet, unet_inputs  # noqa: E402
from wegen_jax import convert  # noqa: E402

GATED = dict(UNET_CONFIGS["sd15"], attention_type="gated")


def _boxes(batch=2, n=3, dim=24, seed=0):
  rng = np.random.default_rng(seed)
  lo = rng.uniform(0, 0.5, (batch, n, 2))
  boxes = np.concatenate([lo, lo + rng.uniform(0.1, 0.5, (batch, n, 2))], -1).astype(np.float32)
  masks = np.ones((batch, n), np.float32)
  masks[0, -1] = 0  # a padded box slot takes the learned null features
  return dict(boxes=boxes, masks=masks, positive_embeddings=rng.normal(size=(batch, n, dim)).astype(np.float32))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  torch.manual_seed(0)
  ref = diffusers.UNet2DConditionModel(**GATED)
  perturb(ref, seed=0)
  with torch.no_grad():  # open the gates wide so the fuser's contribution is large
    for name, p in ref.named_parameters():
      if name.endswith(("alpha_attn", "alpha_dense")):
        p.fill_(0.8)
  path = tmp_path_factory.mktemp("gligen")
  ref.save_pretrained(path)
  return ref, convert.load_diffusers_unet(path), path


@nnx.jit
def _forward(unet, x, t, ctx, gligen):
  return unet(x, t, ctx, gligen=gligen)


def _run_ref(ref, x, t, ctx, gligen):
  with torch.no_grad():
    g = {k: torch.from_numpy(v) for k, v in gligen.items()}
    return ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx), cross_attention_kwargs={"gligen": g})[
      0
    ].numpy()


def test_gligen_noise_prediction_matches_diffusers(pair):
  ref, unet, _ = pair
  assert unet.cfg.attention_type == "gated" and unet.position_net is not None
  x, t, ctx, _ = unet_inputs(ref)
  gligen = _boxes()
  want = _run_ref(ref, x, t, ctx, gligen)
  plain = run_diffusers_unet(ref, x, t, ctx)  # no boxes: the fuser is skipped
  assert np.abs(want - plain).max() > 1e-2  # the boxes change the prediction
  got = np.asarray(
    _forward(unet, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx), {k: jnp.asarray(v) for k, v in gligen.items()})
  )
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  # scale 0 (grounding off for a step, GLIGEN's scheduled sampling) equals the UNet without boxes
  off = dict({k: jnp.asarray(v) for k, v in gligen.items()}, scale=jnp.float32(0.0))
  got_off = _forward(unet, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx), off)
  np.testing.assert_allclose(np.asarray(got_off), plain, atol=1e-4, rtol=0)


def test_position_net_matches(pair):
  ref, unet, _ = pair
  gligen = _boxes(seed=3)
  with torch.no_grad():
    want = ref.position_net(**{k: torch.from_numpy(v) for k, v in gligen.items()}).numpy()
  got = np.asarray(unet.position_net(*(jnp.asarray(gligen[k]) for k in ("boxes", "masks", "positive_embeddings"))))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_gligen_export_round_trip(pair, tmp_path):
  ref, unet, _ = pair
  convert.save_diffusers_unet(unet, tmp_path)
  back = diffusers.UNet2DConditionModel.from_pretrained(tmp_path).eval()
  assert back.config.attention_type == "gated"
  assert sorted(back.state_dict()) == sorted(ref.state_dict())
  x, t, ctx, _ = unet_inputs(ref, seed=1)
  gligen = _boxes(seed=1)
  np.testing.assert_allclose(_run_ref(back, x, t, ctx, gligen), _run_ref(ref, x, t, ctx, gligen), atol=1e-5, rtol=0)
