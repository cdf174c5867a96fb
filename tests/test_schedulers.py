"""DDPM / DDIM / Euler vs diffusers, step by step, over spacings and prediction types."""

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from wegen_jax.diffusion import schedulers as S  # noqa: E402

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, clip_sample=False)
CASES = {
  "DDPMScheduler": [dict(), dict(SD, variance_type="fixed_large"), dict(variance_type="fixed_small_log")],
  "DDIMScheduler": [dict(SD, set_alpha_to_one=False), dict(), dict(SD, rescale_betas_zero_snr=True)],
  "EulerDiscreteScheduler": [
    dict(),
    dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    dict(rescale_betas_zero_snr=True),
  ],
}
PARAMS = [
  (name, i, spacing, pred)
  for name, cfgs in CASES.items()
  for i in range(len(cfgs))
  for spacing, pred in itertools.product(("leading", "trailing", "linspace"), ("epsilon", "v_prediction"))
]


def _pair(name, i, spacing, pred):
  theirs = getattr(diffusers, name)(**CASES[name][i], timestep_spacing=spacing, prediction_type=pred)
  return theirs, S.scheduler_from_config(dict(theirs.config, _class_name=name))


@pytest.mark.parametrize("name,i,spacing,pred", PARAMS)
def test_step_parity(name, i, spacing, pred):
  theirs, ours = _pair(name, i, spacing, pred)
  n, eta = 10, (0.5 if name == "DDIMScheduler" and i == 1 else 0.0)
  if eta:
    ours = ours.replace(eta=eta)
  theirs.set_timesteps(n)
  plan = ours.plan(n)
  np.testing.assert_array_equal(np.asarray(plan.timesteps), theirs.timesteps.numpy())
  np.testing.assert_allclose(float(plan.init_noise_sigma), float(theirs.init_noise_sigma), rtol=1e-6)
  rng = np.random.RandomState(0)
  x = rng.randn(2, 4, 8, 8).astype(np.float32) * float(theirs.init_noise_sigma)
  xt, xj = torch.tensor(x), jnp.asarray(x)
  gen = torch.Generator().manual_seed(0)
  step = jax.jit(lambda out, i, x, noise: ours.step(plan, out, i, x, noise=noise))
  for k, t in enumerate(theirs.timesteps):
    out = rng.randn(*x.shape).astype(np.float32)
    tol = dict(rtol=1e-5, atol=1e-5 * max(1, float(xt.abs().max())))
    np.testing.assert_allclose(
      np.asarray(ours.scale_model_input(plan, xj, k)), theirs.scale_model_input(xt, t).numpy(), **tol
    )
    # The noise diffusers will draw for this step (same generator state).
    noise = torch.randn(x.shape, generator=torch.Generator().set_state(gen.get_state())).numpy()
    kw = {"eta": eta} if name == "DDIMScheduler" else {}
    xt = theirs.step(torch.tensor(out), t, xt, generator=gen, **kw).prev_sample
    xj = step(jnp.asarray(out), k, xj, jnp.asarray(noise))
    np.testing.assert_allclose(np.asarray(xj), xt.numpy(), **tol, err_msg=f"step {k} (t={t})")


def test_add_noise_and_velocity():
  theirs = diffusers.DDPMScheduler(**SD)
  ours = S.DDPMScheduler.from_config(theirs.config)
  rng = np.random.RandomState(1)
  x0, noise = rng.randn(3, 4, 8, 8).astype(np.float32), rng.randn(3, 4, 8, 8).astype(np.float32)
  t = np.array([0, 499, 999])
  args = (torch.tensor(x0), torch.tensor(noise), torch.tensor(t))
  np.testing.assert_allclose(np.asarray(ours.add_noise(x0, noise, t)), theirs.add_noise(*args).numpy(), atol=1e-6)
  np.testing.assert_allclose(np.asarray(ours.get_velocity(x0, noise, t)), theirs.get_velocity(*args).numpy(), atol=1e-6)


def test_unsupported_config_is_an_error():
  with pytest.raises(ValueError, match="use_karras_sigmas"):
    S.EulerDiscreteScheduler.from_config({"use_karras_sigmas": True})
  with pytest.raises(ValueError, match="not supported"):
    S.scheduler_from_config({"_class_name": "PNDMScheduler"})
