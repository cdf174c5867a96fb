"""AutoencoderKL vs diffusers: posterior mean/logvar, decode, sample, export round trip."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from tests.test_diffusion_refs import VAE_CONFIG, diffusers_vae, perturb  # noqa: E402
from wegen_jax import convert  # noqa: E402
from wegen_jax.convert.checkpoint_io import CheckpointError  # noqa: E402
from wegen_jax.models.vae import DiagonalGaussian  # noqa: E402


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  ref = diffusers_vae()
  path = tmp_path_factory.mktemp("vae")
  ref.save_pretrained(path)
  return ref, convert.load_diffusers_vae(path)


@nnx.jit
def _encode(vae, x):
  post = vae.encode(x)
  return post.mean, post.logvar


def test_encode_decode_match(pair):
  ref, vae = pair
  x = np.random.RandomState(0).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
  with torch.no_grad():
    post = ref.encode(torch.tensor(x)).latent_dist
    z = post.mean
    img = ref.decode(z).sample.numpy()
  mean, logvar = _encode(vae, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(mean), post.mean.numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(logvar), post.logvar.numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(
    np.asarray(nnx.jit(lambda v, z: v.decode(z))(vae, jnp.asarray(z.numpy()))), img, atol=1e-4, rtol=0
  )
  assert mean.shape == (2, 4, 8, 8)


# Less common AutoencoderKL options, several per model (diffusers keeps SiLU before conv_out
# whatever act_fn says; the resnets take act_fn).
VARIANTS = {
  "gelu_no_mid_attention": dict(act_fn="gelu", mid_block_add_attention=False, layers_per_block=2),
  "flux_like": dict(
    latent_channels=8,
    use_quant_conv=False,
    use_post_quant_conv=False,
    shift_factor=0.1,
    scaling_factor=0.3,
    in_channels=4,
    out_channels=2,
  ),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_config_variants_match_and_round_trip(variant, tmp_path):
  torch.manual_seed(0)
  ref = perturb(diffusers.AutoencoderKL(**dict(VAE_CONFIG, **VARIANTS[variant])))
  ref.save_pretrained(tmp_path / "in")
  vae = convert.load_diffusers_vae(tmp_path / "in")
  x = np.random.RandomState(0).uniform(-1, 1, (2, ref.config.in_channels, 16, 16)).astype(np.float32)
  with torch.no_grad():
    z = ref.encode(torch.tensor(x)).latent_dist.mean
    img = ref.decode(z).sample.numpy()
  np.testing.assert_allclose(np.asarray(_encode(vae, jnp.asarray(x))[0]), z.numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(vae.decode(jnp.asarray(z.numpy()))), img, atol=1e-4, rtol=0)
  convert.save_diffusers_vae(vae, tmp_path / "out")
  back = diffusers.AutoencoderKL.from_pretrained(tmp_path / "out").eval()
  with torch.no_grad():
    np.testing.assert_allclose(back.decode(z).sample.numpy(), img, atol=1e-5, rtol=0)


def test_posterior_sample_and_scaling(pair):
  _, vae = pair
  mean = jnp.zeros((1, 4, 4, 4))
  post = DiagonalGaussian(mean, jnp.full_like(mean, 2 * np.log(0.5)))  # std 0.5
  s = post.sample(jax.random.key(0))
  assert s.shape == mean.shape and 0.3 < float(jnp.std(s)) < 0.7
  np.testing.assert_array_equal(np.asarray(post.mode()), np.asarray(mean))
  z = jnp.ones((1, 4, 2, 2))
  np.testing.assert_allclose(np.asarray(vae.from_latents(vae.to_latents(z))), np.asarray(z), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(vae.to_latents(z)), vae.cfg.scaling_factor, rtol=1e-6)


def test_export_round_trip(pair, tmp_path):
  ref, vae = pair
  convert.save_diffusers_vae(vae, tmp_path)
  back = diffusers.AutoencoderKL.from_pretrained(tmp_path).eval()
  assert sorted(back.state_dict()) == sorted(ref.state_dict())
  for k, v in ref.state_dict().items():
    np.testing.assert_array_equal(back.state_dict()[k].numpy(), v.numpy(), err_msg=k)


def test_missing_weights_is_a_clear_error(pair, tmp_path):
  ref, _ = pair
  ref.save_pretrained(tmp_path)
  (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
  with pytest.raises(CheckpointError, match="no weights in"):
    convert.load_diffusers_vae(tmp_path)
