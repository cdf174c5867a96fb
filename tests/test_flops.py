"""jaxpr_flops counts matmul/conv FLOPs exactly, through grads, remat, scans and conds."""

import jax
import jax.numpy as jnp
from jax import lax

from wegen_jax.training.flops import jaxpr_flops


def flops(fn, *args):
  return jaxpr_flops(jax.jit(fn).trace(*args).jaxpr)


def test_matmul_and_its_gradient():
  a, b = jnp.ones((8, 16)), jnp.ones((16, 32))
  assert flops(lambda a, b: a @ b, a, b) == 2 * 8 * 16 * 32
  # backward: two more matmuls of the same size
  assert flops(jax.grad(lambda a, b: jnp.sum(a @ b), argnums=(0, 1)), a, b) == 3 * 2 * 8 * 16 * 32


def test_batched_einsum_and_grouped_convolution():
  q, k = jnp.ones((2, 4, 10, 8)), jnp.ones((2, 4, 12, 8))
  assert flops(lambda q, k: jnp.einsum("bhtd,bhsd->bhts", q, k), q, k) == 2 * 2 * 4 * 10 * 12 * 8
  x, w = jnp.ones((2, 8, 9, 9)), jnp.ones((6, 4, 3, 3))  # NCHW, OIHW, 2 groups: 4 inputs per output
  conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", feature_group_count=2)
  assert flops(conv, x, w) == 2 * (2 * 6 * 9 * 9) * (4 * 3 * 3)


def test_scan_multiplies_its_body_and_remat_recomputes():
  w, x = jnp.ones((5, 16, 16)), jnp.ones((4, 16))
  layer = 2 * 4 * 16 * 16

  def net(w, x, remat):
    body = lambda h, wi: (jnp.tanh(h @ wi), None)
    body = jax.checkpoint(body) if remat else body
    return jnp.sum(lax.scan(body, x, w)[0])

  assert flops(lambda w, x: net(w, x, False), w, x) == 5 * layer
  assert flops(jax.grad(lambda w, x: net(w, x, False)), w, x) == 5 * 3 * layer  # fwd + 2 bwd matmuls
  assert flops(jax.grad(lambda w, x: net(w, x, True)), w, x) == 5 * 4 * layer  # + the recomputed fwd


def test_cond_counts_the_costlier_branch():
  a = jnp.ones((8, 8))
  fn = lambda p, a: lax.cond(p, lambda a: a @ a @ a, lambda a: a @ a, a)
  assert flops(fn, True, a) == 2 * 2 * 8**3
