"""Performance changes keep the numbers, and the GPU suite passes its CPU dry run."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wegen_jax.layers.attention import softmax_last
from wegen_jax.layers.linear import Dense, matmul_2d
from wegen_jax.training.losses import IGNORE_INDEX, cross_entropy

ROOT = Path(__file__).resolve().parents[1]


def _reference_ce(logits, labels):
  """The previous formulation: log_softmax, then a gather of the label's log-probability."""
  valid = labels != IGNORE_INDEX
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(valid.sum(), 1)


def test_cross_entropy_equals_log_softmax_gather():
  rng = np.random.RandomState(0)
  logits = jnp.asarray(rng.randn(2, 7, 50).astype(np.float32) * 4)
  labels = jnp.asarray(rng.randint(0, 50, (2, 7)))
  labels = labels.at[0, :3].set(IGNORE_INDEX)
  loss, count = cross_entropy(logits, labels)
  assert int(count) == 11
  np.testing.assert_allclose(loss, _reference_ce(logits, labels), rtol=1e-6)
  got = jax.grad(lambda x: cross_entropy(x, labels)[0])(logits)
  want = jax.grad(lambda x: _reference_ce(x, labels))(logits)
  np.testing.assert_allclose(got, want, atol=1e-7)
  assert float(jnp.abs(got[0, :3]).max()) == 0.0  # ignored positions get no gradient


def test_dense_flattened_matmul_is_the_same_product():
  rng = np.random.RandomState(1)
  x = jnp.asarray(rng.randn(3, 5, 16).astype(np.float32))
  layer = Dense(16, 24, use_bias=True, rngs=nnx.Rngs(0))
  k, b = layer.kernel[...], layer.bias[...]
  np.testing.assert_allclose(layer(x), jnp.einsum("btk,kn->btn", x, k) + b, rtol=1e-6, atol=1e-6)
  assert matmul_2d(x[0], k).shape == (5, 24)
  got = jax.grad(lambda k, x: jnp.sum(jnp.sin(matmul_2d(x, k))), argnums=(0, 1))(k, x)
  want = jax.grad(lambda k, x: jnp.sum(jnp.sin(jnp.dot(x, k))), argnums=(0, 1))(k, x)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_softmax_backward_from_probabilities_matches_jax():
  """softmax_last's backward (p * (g - sum(g p))) gives jax.nn.softmax's values and gradients,
  also on rows with masked (finfo.min) logits as attention writes them."""
  x = jax.random.normal(jax.random.key(0), (2, 3, 7, 9)) * 4
  mask = jnp.tril(jnp.ones((7, 9), bool), k=2)
  x = jnp.where(mask, x, jnp.finfo(jnp.float32).min)
  w = jax.random.normal(jax.random.key(1), x.shape)

  def loss(f):
    return lambda x: jnp.sum(jnp.sin(f(x)) * w)

  np.testing.assert_allclose(softmax_last(x), jax.nn.softmax(x, axis=-1), rtol=1e-6, atol=1e-7)
  got, want = jax.grad(loss(softmax_last))(x), jax.grad(loss(lambda v: jax.nn.softmax(v, axis=-1)))(x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(got).max()) > 1e-3  # a real gradient, not zeros on both sides


def test_small_input_convolution_is_the_same_product():
  """Conv2d on a few input channels (shifted copies times the flattened kernel) equals XLA's
  convolution, gradients included, for odd sizes, 1x7-style kernels and asymmetric padding."""
  from wegen_jax.layers.conv import Conv2d

  for cin, kernel, padding, hw in [
    (3, 3, None, (13, 9)),
    (4, 3, None, (8, 8)),
    (3, (1, 7), (0, 3), (6, 11)),
    (3, 5, 1, (9, 9)),
  ]:
    conv = Conv2d(cin, 16, kernel, padding=padding, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(cin).normal(size=(2, *hw, cin)), jnp.float32)
    ph, pw = (conv.padding, conv.padding) if isinstance(conv.padding, int) else conv.padding
    ref = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), ((ph, ph), (pw, pw)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    k = conv.kernel[...]
    assert "conv_general_dilated" not in str(jax.make_jaxpr(conv)(x))  # the matmul path ran
    np.testing.assert_allclose(conv(x), ref(x, k) + conv.bias[...], rtol=1e-5, atol=1e-5)
    ours = jax.grad(lambda x: jnp.sum(jnp.sin(conv(x))))(x)
    theirs = jax.grad(lambda x: jnp.sum(jnp.sin(ref(x, k) + conv.bias[...])))(x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_profile_summarizes_compiled_ops():
  sys.path.insert(0, str(ROOT))
  from bench.op_profile import summarize, trace_events

  a = jnp.ones((256, 256))
  f = jax.jit(lambda x: jnp.tanh(x @ x).sum())
  f(a).block_until_ready()
  events, wall = trace_events(lambda: f(a).block_until_ready(), steps=2)
  rows = summarize(events)
  assert wall > 0 and rows and all(sec >= 0 for _, sec, _ in rows)
  names = " ".join(name for name, _, _ in rows)
  assert "dot" in names or "fusion" in names, names


def test_gpu_suite_cpu_dry_run(tmp_path):
  env = dict(os.environ, GPU_SUITE_DRY_RUN="1", GPU_SUITE_OUT=str(tmp_path), PYTHON=sys.executable)
  run = subprocess.run(["bash", "bench/gpu_suite.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  assert "=== summary: 0 failed" in run.stdout
  for name in ("kernels", "attention", "llm_mfu", "wegen_mfu"):
    assert f"=== {name}: exit 0" in run.stdout
  assert run.stdout.count("MFU ") == 3  # LLM: model and program FLOPs; WeGen: program FLOPs
  assert "| 32 | 2 | True | fwd+bwd |" in run.stdout  # the kernel's forward and backward ran
