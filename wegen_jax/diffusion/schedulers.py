"""Noise schedulers (DDPM, DDIM, Euler discrete) with diffusers' arithmetic, jit/loop friendly.

A scheduler is an immutable config. `plan(n)` precomputes, in numpy and float32 as diffusers
does, everything a sampling run needs (timesteps, per-step alpha products or sigmas) into a
`Plan` of arrays; `step(plan, model_output, i, sample, key=...)` then indexes it with a traced
step index, so a whole sampling loop is one `lax.fori_loop` inside one compiled program.

    sched = EulerDiscreteScheduler.from_config(json.load(open("scheduler/scheduler_config.json")))
    plan = sched.plan(50)
    x = noise * plan.init_noise_sigma
    for i in range(50):                    # or lax.fori_loop (see wegen_jax.diffusion.sampling)
      eps = unet(sched.scale_model_input(plan, x, i), plan.timesteps[i], ...)
      x = sched.step(plan, eps, i, x, key=jax.random.fold_in(key, i))
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SPACINGS = ("leading", "trailing", "linspace")


def make_betas(schedule: str, n: int, beta_start: float, beta_end: float, trained_betas=None) -> np.ndarray:
  if trained_betas is not None:
    return np.asarray(trained_betas, np.float32)
  if schedule == "linear":
    return np.linspace(beta_start, beta_end, n, dtype=np.float32)
  if schedule == "scaled_linear":  # latent diffusion (SD, SDXL)
    return np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float32) ** 2
  if schedule == "squaredcos_cap_v2":  # GLIDE cosine
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], np.float32)
  raise ValueError(f"beta_schedule={schedule!r}; supported: linear, scaled_linear, squaredcos_cap_v2")


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
  """Shifts the schedule so the last step has zero SNR (arXiv 2305.08891, Algorithm 1)."""
  sqrt_ab = np.sqrt(np.cumprod((np.float32(1) - betas).astype(np.float64)).astype(np.float32))
  s0, st = sqrt_ab[0].copy(), sqrt_ab[-1].copy()
  sqrt_ab = (sqrt_ab - st) * (s0 / (s0 - st))
  ab = sqrt_ab**2
  alphas = np.concatenate([ab[:1], ab[1:] / ab[:-1]])
  return (1 - alphas).astype(np.float32)


def spaced_timesteps(spacing: str, n_train: int, n: int, steps_offset: int = 0) -> np.ndarray:
  """Inference timesteps, descending, as diffusers' set_timesteps (float64 before rounding)."""
  if n > n_train:
    raise ValueError(f"{n} inference steps exceed the {n_train} training timesteps")
  if spacing == "linspace":
    return np.linspace(0, n_train - 1, n).round()[::-1].copy()
  if spacing == "leading":
    return (np.arange(0, n) * (n_train // n)).round()[::-1].copy() + steps_offset
  if spacing == "trailing":
    return np.round(np.arange(n_train, 0, -n_train / n)) - 1
  raise ValueError(f"timestep_spacing={spacing!r}; supported: {SPACINGS}")


@struct.dataclass
class Plan:
  """Per-step tables of one sampling run (a pytree: pass it into jit)."""

  timesteps: jax.Array  # [n] what the UNet sees (int32 for DDPM/DDIM, float32 for Euler)
  alpha_t: jax.Array  # [n] alphas_cumprod at t (DDPM/DDIM)
  alpha_prev: jax.Array  # [n] alphas_cumprod at the previous timestep (DDPM/DDIM)
  sigmas: jax.Array  # [n+1] Euler sigmas (last is 0)
  init_noise_sigma: jax.Array

  @property
  def num_steps(self) -> int:
    return self.timesteps.shape[0]


def _bcast(v, x):
  return jnp.reshape(v, (-1,) + (1,) * (x.ndim - 1)) if jnp.ndim(v) else v


@dataclasses.dataclass(frozen=True)
class _Base:
  num_train_timesteps: int = 1000
  beta_start: float = 0.0001
  beta_end: float = 0.02
  beta_schedule: str = "linear"
  trained_betas: Any = None
  prediction_type: str = "epsilon"
  timestep_spacing: str = "leading"
  steps_offset: int = 0
  rescale_betas_zero_snr: bool = False

  # diffusers options we do not implement: loading a config that turns one on is an error.
  _UNSUPPORTED = {
    "thresholding": False,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "timestep_type": "discrete",
    "final_sigmas_type": "zero",
  }

  def __post_init__(self):
    if self.prediction_type not in PREDICTION_TYPES:
      raise ValueError(f"prediction_type={self.prediction_type!r}; supported: {PREDICTION_TYPES}")
    if self.timestep_spacing not in SPACINGS:
      raise ValueError(f"timestep_spacing={self.timestep_spacing!r}; supported: {SPACINGS}")

  @classmethod
  def from_config(cls, d: Mapping[str, Any], **overrides):
    """From a diffusers scheduler_config.json dict (any scheduler's: unknown keys are ignored)."""
    for key, ok in cls._UNSUPPORTED.items():
      if key in d and d[key] != ok:
        raise ValueError(f"{cls.__name__}: {key}={d[key]!r} is not supported (only {ok!r})")
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
    return cls(**{**kw, **overrides})

  def replace(self, **kw):
    return dataclasses.replace(self, **kw)

  @property
  def betas(self) -> np.ndarray:
    b = make_betas(self.beta_schedule, self.num_train_timesteps, self.beta_start, self.beta_end, self.trained_betas)
    return rescale_zero_terminal_snr(b) if self.rescale_betas_zero_snr else b

  @property
  def alphas_cumprod(self) -> np.ndarray:
    # float32 alphas, float64 running product: what torch.cumprod does on CPU.
    return np.cumprod((np.float32(1) - self.betas).astype(np.float64)).astype(np.float32)

  # Training-time forward process (shared by all three, as in diffusers' training scripts).
  def add_noise(self, x0, noise, t):
    ac = jnp.asarray(self.alphas_cumprod)[t]
    return _bcast(jnp.sqrt(ac), x0) * x0 + _bcast(jnp.sqrt(1 - ac), x0) * noise

  def get_velocity(self, x0, noise, t):
    ac = jnp.asarray(self.alphas_cumprod)[t]
    return _bcast(jnp.sqrt(ac), x0) * noise - _bcast(jnp.sqrt(1 - ac), x0) * x0

  def snr(self, t):
    ac = jnp.asarray(self.alphas_cumprod)[t]
    return ac / (1 - ac)

  def training_target(self, x0, noise, t):
    if self.prediction_type == "epsilon":
      return noise
    if self.prediction_type == "v_prediction":
      return self.get_velocity(x0, noise, t)
    return x0

  def scale_model_input(self, plan: Plan, sample, i):
    return sample

  def _x0_eps(self, model_output, sample, a, b):
    """(predicted x0, predicted noise) from the model output; a = alpha_prod_t, b = 1 - a."""
    if self.prediction_type == "epsilon":
      return (sample - b**0.5 * model_output) / a**0.5, model_output
    if self.prediction_type == "v_prediction":
      return a**0.5 * sample - b**0.5 * model_output, a**0.5 * model_output + b**0.5 * sample
    return model_output, (sample - a**0.5 * model_output) / b**0.5

  def _plan(self, timesteps, alpha_t, alpha_prev, sigmas=None, init=1.0) -> Plan:
    return Plan(
      timesteps=jnp.asarray(timesteps),
      alpha_t=jnp.asarray(alpha_t, jnp.float32),
      alpha_prev=jnp.asarray(alpha_prev, jnp.float32),
      sigmas=jnp.zeros((len(timesteps) + 1,), jnp.float32) if sigmas is None else jnp.asarray(sigmas),
      init_noise_sigma=jnp.asarray(init, jnp.float32),
    )


@dataclasses.dataclass(frozen=True)
class DDPMScheduler(_Base):
  variance_type: str = "fixed_small"  # fixed_small | fixed_small_log | fixed_large
  clip_sample: bool = True
  clip_sample_range: float = 1.0

  def __post_init__(self):
    super().__post_init__()
    if self.variance_type not in ("fixed_small", "fixed_small_log", "fixed_large"):
      raise ValueError(
        f"DDPM variance_type={self.variance_type!r}; supported: fixed_small, fixed_small_log, fixed_large"
      )

  def plan(self, num_steps: int) -> Plan:
    ts = spaced_timesteps(self.timestep_spacing, self.num_train_timesteps, num_steps, self.steps_offset).astype(
      np.int64
    )
    ac = self.alphas_cumprod
    prev = np.concatenate([ts[1:], [-1]])  # the next entry of the schedule, -1 after the last
    a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], np.float32(1.0))
    return self._plan(ts.astype(np.int32), ac[ts], a_prev)

  def step(self, plan: Plan, model_output, i, sample, *, key=None, noise=None):
    a, a_prev = plan.alpha_t[i], plan.alpha_prev[i]
    b, b_prev = 1 - a, 1 - a_prev
    cur_a = a / a_prev
    cur_b = 1 - cur_a
    x0, _ = self._x0_eps(model_output, sample, a, b)
    if self.clip_sample:
      x0 = jnp.clip(x0, -self.clip_sample_range, self.clip_sample_range)
    prev = (a_prev**0.5 * cur_b) / b * x0 + cur_a**0.5 * b_prev / b * sample
    if noise is None:
      if key is None:
        raise ValueError("DDPMScheduler.step adds noise: pass key= (or noise=)")
      noise = jax.random.normal(key, sample.shape, sample.dtype)
    var = jnp.maximum(b_prev / b * (1 - a / a_prev), 1e-20)
    if self.variance_type == "fixed_large":
      std = cur_b**0.5
    elif self.variance_type == "fixed_small_log":
      std = jnp.exp(0.5 * jnp.log(var))
    else:
      std = var**0.5
    return prev + jnp.where(plan.timesteps[i] > 0, std, 0.0) * noise


@dataclasses.dataclass(frozen=True)
class DDIMScheduler(_Base):
  clip_sample: bool = True
  clip_sample_range: float = 1.0
  set_alpha_to_one: bool = True
  eta: float = 0.0  # a pipeline call argument in diffusers; part of the config here

  def plan(self, num_steps: int) -> Plan:
    ts = spaced_timesteps(self.timestep_spacing, self.num_train_timesteps, num_steps, self.steps_offset).astype(
      np.int64
    )
    ac = self.alphas_cumprod
    prev = ts - self.num_train_timesteps // num_steps  # diffusers' rule, whatever the spacing
    final = np.float32(1.0) if self.set_alpha_to_one else ac[0]
    a_prev = np.where(prev >= 0, ac[np.clip(prev, 0, None)], final)
    return self._plan(ts.astype(np.int32), ac[ts], a_prev)

  def step(self, plan: Plan, model_output, i, sample, *, key=None, noise=None):
    a, a_prev = plan.alpha_t[i], plan.alpha_prev[i]
    b = 1 - a
    x0, eps = self._x0_eps(model_output, sample, a, b)
    if self.clip_sample:
      x0 = jnp.clip(x0, -self.clip_sample_range, self.clip_sample_range)
    var = (1 - a_prev) / b * (1 - a / a_prev)
    std = self.eta * var**0.5
    prev = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
    if self.eta > 0:
      if noise is None:
        if key is None:
          raise ValueError("DDIMScheduler.step with eta > 0 adds noise: pass key= (or noise=)")
        noise = jax.random.normal(key, sample.shape, sample.dtype)
      prev = prev + std * noise
    return prev


@dataclasses.dataclass(frozen=True)
class EulerDiscreteScheduler(_Base):
  """SDXL's default sampler: beta 0.00085..0.012 scaled_linear, leading spacing, offset 1."""

  beta_start: float = 0.00085
  beta_end: float = 0.012
  beta_schedule: str = "scaled_linear"
  steps_offset: int = 1
  interpolation_type: str = "linear"

  @property
  def alphas_cumprod(self) -> np.ndarray:
    ac = super().alphas_cumprod
    if self.rescale_betas_zero_snr:  # as diffusers: zero terminal SNR would give sigma = inf
      ac[-1] = 2.0**-24
    return ac

  def plan(self, num_steps: int) -> Plan:
    if self.interpolation_type != "linear":
      raise ValueError(f"Euler interpolation_type={self.interpolation_type!r}; supported: linear")
    ts = spaced_timesteps(self.timestep_spacing, self.num_train_timesteps, num_steps, self.steps_offset).astype(
      np.float32
    )
    ac = self.alphas_cumprod
    sig = ((1 - ac) / ac) ** 0.5
    sig = np.concatenate([np.interp(ts, np.arange(len(sig)), sig), [0.0]]).astype(np.float32)
    init = sig.max() if self.timestep_spacing in ("linspace", "trailing") else (sig.max() ** 2 + 1) ** 0.5
    zeros = np.zeros_like(ts)
    return self._plan(ts, zeros, zeros, sig, init)

  def scale_model_input(self, plan: Plan, sample, i):
    return sample / (plan.sigmas[i] ** 2 + 1) ** 0.5

  def step(self, plan: Plan, model_output, i, sample, *, key=None, noise=None):
    del key, noise  # s_churn = 0: the deterministic Euler step diffusers runs by default
    sigma = plan.sigmas[i]
    if self.prediction_type == "epsilon":
      x0 = sample - sigma * model_output
    elif self.prediction_type == "v_prediction":
      x0 = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
    else:
      x0 = model_output
    derivative = (sample - x0) / sigma
    return sample + derivative * (plan.sigmas[i + 1] - sigma)

  def add_noise_at_step(self, plan: Plan, x0, noise, i):
    """x0 + sigma_i * noise: the Euler-space noising for img2img from inference step i."""
    return x0 + plan.sigmas[i] * noise


SCHEDULERS = {
  "DDPMScheduler": DDPMScheduler,
  "DDIMScheduler": DDIMScheduler,
  "EulerDiscreteScheduler": EulerDiscreteScheduler,
}


def scheduler_from_config(d: Mapping[str, Any], **overrides):
  """The scheduler named by a scheduler_config.json's _class_name."""
  name = d.get("_class_name")
  if name not in SCHEDULERS:
    raise ValueError(f"scheduler {name!r} is not supported; supported: {sorted(SCHEDULERS)}")
  return SCHEDULERS[name].from_config(d, **overrides)
