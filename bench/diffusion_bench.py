"""UNet train step and 20-step sampling: wegen_jax vs diffusers on the same machine, same weights.

    .venv/bin/python bench/diffusion_bench.py            # SD1.5-like small config, CPU
    .venv/bin/python bench/diffusion_bench.py --quick    # fewer repeats

The JAX side runs with wegen_jax.layers.blocked_attention.cpu_xla_flags() appended to XLA_FLAGS
(512-bit SIMD in XLA's loop fusions; no change to the math); --no-cpu-flags leaves XLA_FLAGS alone.

Both sides run float32 with the same random weights (diffusers init, converted). Train step:
forward + backward + AdamW on the epsilon MSE. Sampling: Euler, 20 steps, classifier-free
guidance (one batched UNet call per step). Times are medians after warm-up (JAX compile excluded
and reported separately; JAX and PyTorch runs alternate so both see the same machine load).
Prints one line per task and the speed-up ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
from diffusers import EulerDiscreteScheduler as TorchEuler  # noqa: E402
from diffusers import UNet2DConditionModel as TorchUNet  # noqa: E402
from flax import nnx  # noqa: E402

from bench.common import compare, matmul_peak_flops  # noqa: E402
from wegen_jax import convert  # noqa: E402
from wegen_jax.diffusion import ClassifierFree, Conditioning, EulerDiscreteScheduler, sample_latents  # noqa: E402
from wegen_jax.layers.blocked_attention import cpu_xla_flags  # noqa: E402
from wegen_jax.training.flops import jaxpr_flops  # noqa: E402

# SD1.5's block layout at a CPU-sized width: 4 levels, 2 layers each, cross-attention on 3.
CONFIG = dict(
  sample_size=32,
  block_out_channels=(64, 128, 192, 192),
  layers_per_block=2,
  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
  attention_head_dim=8,
  cross_attention_dim=256,
  norm_num_groups=32,
)
BATCH, SEQ, LATENT, STEPS = 2, 77, 32, 20


def jax_train_step(unet, lr=1e-4):
  # Plain arrays across the jit boundary: flattening ~700 nnx.Variable leaves (and the Adam
  # moments built from them) costs ~25 ms of Python per call, which PyTorch does not pay.
  graphdef, params = nnx.split(unet, nnx.Param)
  params = nnx.as_pure(params)
  opt = optax.adamw(lr, weight_decay=0.01)

  @jax.jit
  def step(params, opt_state, x, t, ctx, target):
    def loss_fn(p):
      out = nnx.merge(graphdef, p)(x, t, ctx)
      return jnp.mean(jnp.square(out - target))

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step, params, opt.init(params)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument(
    "--attention",
    default="blocked",
    choices=("blocked", "xla"),
    help="JAX attention implementation (blocked: cache-sized query tiles, best on CPU)",
  )
  ap.add_argument("--no-cpu-flags", action="store_true", help="do not add cpu_xla_flags() to XLA_FLAGS")
  args = ap.parse_args()
  if not args.no_cpu_flags:  # XLA reads XLA_FLAGS when the backend starts: before any JAX op
    os.environ["XLA_FLAGS"] = " ".join(f for f in [os.environ.get("XLA_FLAGS", ""), *cpu_xla_flags()] if f)
  reps = 3 if args.quick else 5
  torch.manual_seed(0)
  ref = TorchUNet(**CONFIG)
  with tempfile.TemporaryDirectory() as d:
    ref.save_pretrained(d)
    unet = convert.load_diffusers_unet(d, attention_impl=args.attention)
  n_params = sum(p.numel() for p in ref.parameters())
  rng = np.random.RandomState(0)
  x = rng.randn(BATCH, 4, LATENT, LATENT).astype(np.float32)
  t = rng.randint(0, 1000, (BATCH,))
  ctx = rng.randn(BATCH, SEQ, CONFIG["cross_attention_dim"]).astype(np.float32)
  target = rng.randn(*x.shape).astype(np.float32)
  print(
    f"config: SD1.5-like, {n_params / 1e6:.1f}M params, latent {LATENT}x{LATENT}, batch {BATCH}, "
    f"context {SEQ}x{CONFIG['cross_attention_dim']}; torch threads {torch.get_num_threads()}, "
    f"jax devices {jax.devices()}, jax attention {args.attention!r}, "
    f"XLA_FLAGS {os.environ.get('XLA_FLAGS', '')!r}; load average {os.getloadavg()}"
  )
  results = {}

  # --- train step -------------------------------------------------------------------------
  step, params, opt_state = jax_train_step(unet)
  jx, jt, jc, jy = map(jnp.asarray, (x, t, ctx, target))
  t0 = time.perf_counter()
  params, opt_state, loss = step(params, opt_state, jx, jt, jc, jy)
  loss.block_until_ready()
  compile_train = time.perf_counter() - t0
  state = [params, opt_state]
  flops = {"train step": jaxpr_flops(step.trace(params, opt_state, jx, jt, jc, jy).jaxpr)}

  def jax_train():
    state[0], state[1], l = step(state[0], state[1], jx, jt, jc, jy)
    l.block_until_ready()

  opt = torch.optim.AdamW(ref.parameters(), lr=1e-4, weight_decay=0.01)
  tx, tt, tc, ty = map(torch.tensor, (x, t, ctx, target))

  def torch_train():
    opt.zero_grad(set_to_none=True)
    loss = torch.mean((ref(tx, tt, tc).sample - ty) ** 2)
    loss.backward()
    opt.step()

  ref.train()
  torch_train()
  jax_train()
  results["train step"] = compare(jax_train, torch_train, warmup=0, repeats=reps)
  ref.eval()

  # --- 20-step sampling with CFG ----------------------------------------------------------
  noise = rng.randn(1, 4, LATENT, LATENT).astype(np.float32)
  ctx2 = rng.randn(2, SEQ, CONFIG["cross_attention_dim"]).astype(np.float32)
  sched = EulerDiscreteScheduler()
  cond = Conditioning(jnp.asarray(ctx2))
  guidance = ClassifierFree(7.5)

  def jax_sample():
    sample_latents(
      unet, sched, cond, jax.random.key(0), num_steps=STEPS, latents=jnp.asarray(noise), guidance=guidance
    ).block_until_ready()

  # The loop is a fori_loop (its body counted once by jaxpr_flops): count one batched UNet call.
  unet_call = jax.make_jaxpr(lambda x: unet(x, sched.plan(STEPS).timesteps[0], cond.encoder_hidden_states))
  flops[f"sampling {STEPS} steps (CFG)"] = STEPS * jaxpr_flops(unet_call(jnp.zeros((2, 4, LATENT, LATENT))))
  t0 = time.perf_counter()
  jax_sample()
  compile_sample = time.perf_counter() - t0
  tsched = TorchEuler()
  tctx2 = torch.tensor(ctx2)

  def torch_sample():
    tsched.set_timesteps(STEPS)
    lat = torch.tensor(noise) * tsched.init_noise_sigma
    with torch.inference_mode():
      for ti in tsched.timesteps:
        inp = tsched.scale_model_input(torch.cat([lat] * 2), ti)
        e_u, e_c = ref(inp, ti, tctx2).sample.chunk(2)
        lat = tsched.step(e_u + 7.5 * (e_c - e_u), ti, lat).prev_sample
    return lat

  # No warm-up run for torch here: eager PyTorch has nothing to compile, and a run costs minutes.
  results[f"sampling {STEPS} steps (CFG)"] = compare(jax_sample, torch_sample, warmup=0, repeats=2)
  print(f"jax compile: train step {compile_train:.1f}s, sampling loop {compile_sample:.1f}s (excluded)")
  for name, (tj, tt_) in results.items():
    print(f"{name:28s} jax {tj * 1e3:9.1f} ms   diffusers {tt_ * 1e3:9.1f} ms   speed-up {tt_ / tj:5.2f}x")
  # What 1.5x diffusers would take: the matmul/conv FLOPs at the rate that beats diffusers' time by
  # 1.5x, next to the rates both sides reach and XLA's dense float32 matmul rate measured now (a
  # yardstick: these steps mix K=8 attention dots, small convolutions and elementwise work).
  peak = matmul_peak_flops()
  print(f"XLA float32 matmul peak (2048^2) now: {peak / 1e9:.1f} GFLOP/s")
  for name, (tj, tt_) in results.items():
    need = flops[name] / (tt_ / 1.5)
    print(
      f"{name:28s} {flops[name] / 1e9:7.1f} GFLOP: jax runs {flops[name] / tj / 1e9:5.1f} GFLOP/s "
      f"({flops[name] / tj / peak:4.0%} of peak), diffusers {flops[name] / tt_ / 1e9:5.1f}; "
      f"1.5x diffusers needs {need / 1e9:5.1f} GFLOP/s "
      f"({need / peak:4.0%} of peak)"
    )
  print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
  main()
