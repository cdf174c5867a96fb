"""optimizer.stack_leaves: AdamW over stacks of equal-shape leaves gives the per-leaf AdamW's
updates (clipping, weight-decay masks, freeze_until groups included), keeps each stack sharded
as its members, and trains and resumes through the trainer."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from wegen_jax.parallel import make_mesh
from wegen_jax.training.optim import make_optimizer, optimized_tree
from wegen_jax.training.stacked_updates import plan_stacks, stack, unstack
from wegen_jax.training.trainer import optimizer_shardings


def _params(seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  layers = {f"layer{i}": {"q": f(8, 16), "o": f(16, 8), "norm": f(16), "lora_a": f(8, 4)} for i in range(3)}
  return {"llm": layers, "unet": {"conv": f(3, 3, 4, 8), "bias": f(8), "proj": f(8, 16)}}


def _labels(params):
  return {"llm": jax.tree.map(lambda _: "llm", params["llm"]), "unet": jax.tree.map(lambda _: "unet", params["unet"])}


def _config(**extra):
  base = dict(lr=1e-2, total_steps=20, warmup_steps=2, weight_decay=0.1, grad_clip=1.0, freeze_until={"unet": 3})
  return ml_collections.ConfigDict({**base, **extra})


def test_plan_groups_equal_shapes_and_roundtrips():
  params = _params()
  plan = plan_stacks(params)
  sizes = sorted(len(g) for g in plan.groups)
  # q of 3 layers + unet.proj (both [8, 16]); o x3; norm x3; lora_a x3; conv; bias
  assert sizes == [1, 1, 3, 3, 3, 4]
  back = unstack(plan, stack(plan, params))
  jax.tree.map(np.testing.assert_array_equal, back, params)
  keyed = plan_stacks(params, [label for label in jax.tree.leaves(_labels(params))])
  assert sorted(len(g) for g in keyed.groups) == [1, 1, 1, 3, 3, 3, 3]  # unet.proj apart from the q's


def test_stacked_adamw_equals_per_leaf_adamw():
  params, labels = _params(), _labels(_params())
  per_leaf = make_optimizer(_config(), labels)
  stacked = make_optimizer(_config(stack_leaves=True), labels, params=params)
  state_a, state_b = per_leaf.init(params), stacked.init(params)
  moments = lambda state: sum(x.ndim > 0 for x in jax.tree.leaves(state))
  assert (moments(state_a), moments(state_b)) == (2 * 15, 2 * 7)  # mu, nu per leaf / per stack
  p_a = p_b = params
  for step in range(6):  # the unet group unfreezes at step 3; clipping is active (norms >> 1)
    grads = _params(seed=100 + step)
    u_a, state_a = per_leaf.update(grads, state_a, p_a)
    u_b, state_b = jax.jit(stacked.update)(grads, state_b, p_b)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), u_a, u_b)
    p_a = jax.tree.map(jnp.add, p_a, u_a)
    p_b = jax.tree.map(jnp.add, p_b, u_b)
  assert float(jnp.abs(u_b["unet"]["conv"]).max()) > 0  # the frozen group did start


def test_stacks_keep_their_members_sharding():
  mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  params = _params()
  specs = jax.tree.map(lambda p: PartitionSpec("fsdp", "tensor") if p.ndim == 2 else PartitionSpec(), params)
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
  params = jax.device_put(params, shardings)
  config = _config(stack_leaves=True, freeze_until={})
  tx = make_optimizer(config, params=params, shardings=shardings)
  reference = optimized_tree(config, params, shardings=shardings)
  opt_shardings = optimizer_shardings(jax.eval_shape(tx.init, params), reference, mesh)
  state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
  mu = state[1][0].mu
  stack_specs = {k: v.sharding.spec for k, v in mu.items()}
  assert PartitionSpec(None, "fsdp", "tensor") in stack_specs.values()
  assert all(v.sharding.spec == reference[k].sharding.spec for k, v in mu.items())
  updates, _ = jax.jit(tx.update)(params, state, params)
  unsharded = make_optimizer(_config(freeze_until={}))
  expected, _ = unsharded.update(params, unsharded.init(params), params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), updates, expected)


def test_stack_leaves_needs_the_params():
  with pytest.raises(ValueError, match="needs the parameters' shapes"):
    make_optimizer(_config(stack_leaves=True))
