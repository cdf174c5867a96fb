"""Sampling loop vs a hand-driven diffusers loop (fixed initial noise), GoT multi-branch guidance,
the image pipeline's determinism, and the Min-SNR diffusion loss."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from tests.test_diffusion_refs import diffusers_unet, diffusers_vae, unet_inputs  # noqa: E402
from wegen_jax import convert  # noqa: E402
from wegen_jax.diffusion import (
  ClassifierFree,
  Conditioning,
  DDIMScheduler,
  DDPMScheduler,  # noqa: E402
  EulerDiscreteScheduler,
  MultiBranch,
  NoGuidance,
  diffusion_loss,
  generate,
  min_snr_weights,
  sample_latents,
)
from wegen_jax.models.unet import widen_conv_in  # noqa: E402

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, clip_sample=False)


def diffusers_cfg_loop(unet, scheduler, noise, ctx, added, scale, steps=10):
  """What StableDiffusion(XL)Pipeline does after encoding the prompt: [uncond, cond] batches."""
  scheduler.set_timesteps(steps)
  latents = torch.tensor(noise) * scheduler.init_noise_sigma
  ctx = torch.tensor(ctx)
  kw = {} if added is None else {"added_cond_kwargs": {k: torch.tensor(v) for k, v in added.items()}}
  with torch.no_grad():
    for t in scheduler.timesteps:
      inp = scheduler.scale_model_input(torch.cat([latents] * 2), t)
      e_u, e_c = unet(inp, t, ctx, **kw).sample.chunk(2)
      latents = scheduler.step(e_u + scale * (e_c - e_u), t, latents).prev_sample
  return latents.numpy()


@pytest.mark.parametrize("name,sched", [("sdxl", "EulerDiscreteScheduler"), ("sd15", "DDIMScheduler")])
def test_ten_step_loop_matches_diffusers(name, sched, tmp_path):
  ref = diffusers_unet(name)
  ref.save_pretrained(tmp_path)
  unet = convert.load_diffusers_unet(tmp_path)
  extra = {} if sched.startswith("Euler") else {"clip_sample": False}
  theirs = getattr(diffusers, sched)(**{k: v for k, v in SD.items() if k != "clip_sample"}, **extra)
  ours = (
    EulerDiscreteScheduler.from_config(theirs.config)
    if sched.startswith("Euler")
    else DDIMScheduler.from_config(theirs.config)
  )
  noise, _, ctx, added = unet_inputs(ref, batch=2)
  noise = noise[:1]
  want = diffusers_cfg_loop(ref, theirs, noise, ctx, added, scale=5.0)  # ctx[0] = uncond, ctx[1] = cond
  cond = Conditioning(
    jnp.asarray(ctx), *((jnp.asarray(added["text_embeds"]), jnp.asarray(added["time_ids"])) if added else ())
  )
  got = sample_latents(
    unet, ours, cond, jax.random.key(0), num_steps=10, latents=jnp.asarray(noise), guidance=ClassifierFree(5.0)
  )
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-3, rtol=0)


def test_multi_branch_guidance_is_one_batched_call(tmp_path):
  """GoT: 12-channel UNet, branches [cond, text, image, uncond] with their own reference/spatial
  latents; one Euler step equals the formula applied to four separate UNet calls."""
  ref = diffusers_unet("sdxl")
  ref.save_pretrained(tmp_path)
  unet = widen_conv_in(convert.load_diffusers_unet(tmp_path), 12)
  unet.conv_in.kernel.set_value(unet.conv_in.kernel[...].at[:, :, 4:].set(0.03))
  _, _, ctx, added = unet_inputs(ref, batch=4)
  rng = np.random.RandomState(3)
  noise = rng.randn(1, 4, 16, 16).astype(np.float32)
  extra = rng.randn(4, 8, 16, 16).astype(np.float32)
  extra[3] = 0.0  # uncond: null latents
  cond = Conditioning(
    jnp.asarray(ctx), jnp.asarray(added["text_embeds"]), jnp.asarray(added["time_ids"]), jnp.asarray(extra)
  )
  g = MultiBranch(a_t=4.0, a_s=3.0, a_r=1.5)
  sched = EulerDiscreteScheduler()
  got = sample_latents(unet, sched, cond, jax.random.key(0), num_steps=1, latents=jnp.asarray(noise), guidance=g)
  plan = sched.plan(1)
  x = noise * float(plan.init_noise_sigma)
  xin = np.asarray(sched.scale_model_input(plan, jnp.asarray(x), 0))
  fwd = nnx.jit(lambda m, *a: m(*a))
  e = [
    np.asarray(
      fwd(
        unet,
        jnp.asarray(np.concatenate([xin, extra[k : k + 1]], 1)),
        plan.timesteps[0],
        jnp.asarray(ctx[k : k + 1]),
        {n: jnp.asarray(v[k : k + 1]) for n, v in added.items()},
      )
    )
    for k in range(4)
  ]
  eps = e[3] + 4.0 * (e[1] - e[2]) + 3.0 * (e[0] - e[1]) + 1.5 * (e[2] - e[3])
  want = np.asarray(sched.step(plan, jnp.asarray(eps), 0, jnp.asarray(x)))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)


def tiny_unet(tmp_path, seed=0):
  """A very small SD-like UNet (torch init + conversion: faster than eager JAX init on CPU)."""
  ref = diffusers_unet("tiny", seed=seed)
  ref.save_pretrained(tmp_path / "tiny_unet")
  return convert.load_diffusers_unet(tmp_path / "tiny_unet")


def test_generate_is_deterministic_for_a_key(tmp_path):
  unet = tiny_unet(tmp_path)
  ref_vae = diffusers_vae()
  ref_vae.save_pretrained(tmp_path)
  vae = convert.load_diffusers_vae(tmp_path)
  cond = Conditioning(jax.random.normal(jax.random.key(1), (2, 5, 8)))
  kw = dict(num_steps=4, height=16, width=16, guidance=NoGuidance())
  sched = DDPMScheduler(**SD)
  a = generate(unet, vae, sched, cond, jax.random.key(7), **kw)
  b = generate(unet, vae, sched, cond, jax.random.key(7), **kw)
  c = generate(unet, vae, sched, cond, jax.random.key(8), **kw)
  assert a.shape == (2, 16, 16, 3) and a.dtype == jnp.uint8
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.any(np.asarray(a) != np.asarray(c))


def test_min_snr_loss_matches_reference_formula(tmp_path):
  sched = DDPMScheduler(**SD)
  theirs = diffusers.DDPMScheduler(**SD)
  t = jnp.array([0, 10, 300, 999])
  # diffusers.training_utils.compute_snr + the train_text_to_image weighting
  from diffusers.training_utils import compute_snr

  snr = compute_snr(theirs, torch.tensor(np.asarray(t))).numpy()
  np.testing.assert_allclose(np.asarray(min_snr_weights(sched, t, 5.0)), np.minimum(snr, 5.0) / snr, rtol=1e-5)
  v = sched.replace(prediction_type="v_prediction")
  np.testing.assert_allclose(np.asarray(min_snr_weights(v, t, 5.0)), np.minimum(snr, 5.0) / (snr + 1), rtol=1e-5)

  ref = diffusers_unet("tiny")
  ref.save_pretrained(tmp_path)
  unet = convert.load_diffusers_unet(tmp_path)
  latents = jax.random.normal(jax.random.key(2), (2, 4, 8, 8))
  ctx = jax.random.normal(jax.random.key(3), (2, 5, 8))
  key = jax.random.key(4)
  # Forward only: the UNet's gradients are checked against sharded runs in test_unet_sharding.
  loss, aux = nnx.jit(lambda m, k: diffusion_loss(m, sched, latents, ctx, k, noise_offset=0.1, return_aux=True))(
    unet, key
  )
  # Recompute by hand from the same draws, with diffusers' UNet as the model.
  kt, kn = jax.random.split(key)
  t = jax.random.randint(kt, (2,), 0, 1000)
  k1, k2 = jax.random.split(kn)
  noise = jax.random.normal(k1, latents.shape) + 0.1 * jax.random.normal(k2, (2, 4, 1, 1))
  noisy = theirs.add_noise(*(torch.tensor(np.asarray(a)) for a in (latents, noise, t)))
  with torch.no_grad():
    pred = ref(noisy, torch.tensor(np.asarray(t)), torch.tensor(np.asarray(ctx))).sample.numpy()
  mse = np.mean((pred - np.asarray(noise)) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(np.asarray(aux["mse"]), mse, rtol=1e-4)
  snr_t = compute_snr(theirs, torch.tensor(np.asarray(t))).numpy()
  weights = np.minimum(snr_t, 5.0) / snr_t
  np.testing.assert_allclose(float(loss), float(np.mean(mse * weights)), rtol=1e-4)
