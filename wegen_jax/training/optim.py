"""Optimisers from config: AdamW, cosine schedule with warm-up and a floor, clipping, and
per-parameter freezing by optax masks.

Freezing: `labels` gives each trainable parameter a group name; `config.freeze_until`
maps a group to the step before which its updates are zero (WeGen stage 1 keeps the UNet
frozen for its first 12k steps while the rest trains). Parameters that never train are
not passed to the optimizer at all (no moments for a frozen 2.6B UNet).

`config.stack_leaves` runs all of it on stacks of equal-shape leaves (training/stacked_updates.py):
the same updates from a far smaller program, for models with thousands of per-layer leaves.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from wegen_jax.training.stacked_updates import plan_stacks, stack_leaves, stacked_abstract, stacked_sharding


def make_schedule(cfg) -> optax.Schedule:
  """Linear warm-up to cfg.lr, cosine decay to cfg.lr * cfg.min_lr_ratio at cfg.total_steps."""
  warmup = int(cfg.get("warmup_steps", 0))
  total = max(int(cfg.total_steps), warmup + 1)
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0 if warmup else cfg.lr,
    peak_value=cfg.lr,
    warmup_steps=warmup,
    decay_steps=total,
    end_value=cfg.lr * cfg.get("min_lr_ratio", 0.0),
  )


def _frozen_until(step_limit: int, inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """No updates and no moment updates before `step_limit` (like requires_grad=False in
  PyTorch); afterwards `inner` runs from its own step 0."""

  def init(params):
    return jnp.zeros([], jnp.int32), inner.init(params)

  def update(updates, state, params=None):
    count, inner_state = state
    run = lambda _: inner.update(updates, inner_state, params)
    skip = lambda _: (jax.tree.map(jnp.zeros_like, updates), inner_state)
    new_updates, inner_state = jax.lax.cond(count >= step_limit, run, skip, None)
    return new_updates, (optax.safe_increment(count), inner_state)

  return optax.GradientTransformation(init, update)


def _no_decay_on_vectors(params):  # no weight decay on norms and biases
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _adamw(cfg, schedule, decay_mask=_no_decay_on_vectors) -> optax.GradientTransformation:
  return optax.adamw(
    schedule,
    b1=cfg.get("b1", 0.9),
    b2=cfg.get("b2", 0.999),
    eps=cfg.get("eps", 1e-8),
    weight_decay=cfg.get("weight_decay", 0.0),
    mask=decay_mask,
  )


def make_optimizer(
  cfg, labels: Any = None, *, params: Any = None, shardings: Any = None
) -> optax.GradientTransformation:
  """cfg fields: lr, total_steps, warmup_steps, min_lr_ratio, b1, b2, eps, weight_decay,
  grad_clip (0 = off), freeze_until {group: step}, stack_leaves. (Gradient accumulation happens
  in the train step, over micro-batches, so one optimizer step = one schedule step, as in the papers.)
  labels: pytree like the params with a group name per leaf (needed for freeze_until).
  stack_leaves (training/stacked_updates.py) needs `params` (arrays or ShapeDtypeStructs) and
  takes the parameters' `shardings` (a tree like params) to keep each stack sharded as its members."""
  if not cfg.get("stack_leaves", False):
    return _clipped_adamw(cfg, labels, _no_decay_on_vectors)
  plan = _stack_plan(params, labels, shardings)

  def on_stacks(plan):
    stack_labels = None if labels is None else dict(zip(plan.names, (label for label, _ in plan.keys)))
    decay = dict(zip(plan.names, (len(shape) > 1 for shape in plan.shapes)))
    return _clipped_adamw(cfg, stack_labels, lambda _: decay)

  return stack_leaves(on_stacks, plan, _stack_shardings(plan))


def optimized_tree(cfg, params, labels: Any = None, shardings: Any = None):
  """The tree whose leaves the optimizer state mirrors (for its shardings): the params, or
  with stack_leaves their stacks as ShapeDtypeStructs carrying the stacked shardings."""
  if not cfg.get("stack_leaves", False):
    return params
  plan = _stack_plan(params, labels, shardings)
  return stacked_abstract(plan, params, _stack_shardings(plan))


def _stack_plan(params, labels, shardings):
  """Stacks of leaves sharing shape, dtype, group label and sharding."""
  if params is None:
    raise ValueError("optimizer.stack_leaves needs the parameters' shapes (make_optimizer(..., params=...))")
  treedef = jax.tree.structure(params)
  per_leaf = lambda tree: [None] * treedef.num_leaves if tree is None else treedef.flatten_up_to(tree)
  return plan_stacks(params, list(zip(per_leaf(labels), per_leaf(shardings))))


def _stack_shardings(plan):
  return [stacked_sharding(sharding) for _, sharding in plan.keys]  # keys are (label, sharding)


def _clipped_adamw(cfg, labels, decay_mask) -> optax.GradientTransformation:
  schedule = make_schedule(cfg)
  freeze: Mapping[str, int] = dict(cfg.get("freeze_until", {}) or {})
  if freeze:
    if labels is None:
      raise ValueError("optimizer.freeze_until needs parameter group labels")
    groups = set(jax.tree.leaves(labels))
    unknown = set(freeze) - groups
    if unknown:
      raise ValueError(f"freeze_until names unknown groups {sorted(unknown)}; groups: {sorted(groups)}")
    # A group unfrozen at step N sees the global learning rate: its schedule is shifted by N.
    transforms = {
      g: (
        _frozen_until(freeze[g], _adamw(cfg, lambda c, n=freeze[g]: schedule(c + n), decay_mask))
        if g in freeze
        else _adamw(cfg, schedule, decay_mask)
      )
      for g in groups
    }
    tx = optax.multi_transform(transforms, labels)
  else:
    tx = _adamw(cfg, schedule, decay_mask)
  # One global norm over all trainable parameters. Always in the chain (an infinite bound leaves
  # finite gradients exactly as they are), so the optimizer state, and so a checkpoint, has the
  # same structure whether or not clipping is on: a rerun may change it.
  clip = float(cfg.get("grad_clip", 0.0) or 0.0)
  return optax.chain(optax.clip_by_global_norm(clip if clip > 0 else float("inf")), tx)
