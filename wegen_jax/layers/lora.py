"""LoRA (arXiv 2106.09685) for any `Dense`: y = base(x) + (alpha / r) * dropout(x) @ A @ B.

`apply_lora(module, targets, ...)` wraps every Dense attribute whose name is in `targets` (e.g.
q, k, v, o, gate, up, down) in place; A starts like PEFT's (Kaiming-uniform), B at zero, so a
freshly wrapped model computes exactly what the base computes. `merge_lora` folds A @ B into the
base kernels and unwraps them (for export: the result is the plain model PyTorch loads); `merge`
/ `unmerge` on one layer toggle the fold in place (PEFT's semantics).

Dropout needs a key per step, and the trainer keeps no mutable RNG state in the model, so the
key is passed explicitly: `with lora_dropout(model, key): model(...)` (no key: no dropout). For the
block each LoRA layer holds its own key as a `LoRADropoutKey` variable, so the key travels with
the layer's state through split/merge: scanned layers (layers/scan.py stacks one key per layer)
and rematerialised ones (layers/remat.py) drop out as the unrolled model does. Outside the block
the variable is gone: checkpoints and exports never see it.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterable

import jax
import jax.numpy as jnp
from flax import nnx

from wegen_jax.layers.linear import Dense, param


class LoRADropoutKey(nnx.Variable):
  """A LoRA layer's dropout key (raw uint32 key data: scan stacks it), set only inside `lora_dropout`."""


def _kaiming_uniform(fan_in: int):
  bound = math.sqrt(6.0 / ((1 + 5.0) * fan_in))  # PyTorch kaiming_uniform_(a=sqrt(5)), as PEFT inits A
  return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


class LoRADense(nnx.Module):
  """A Dense plus a low-rank update; `base` keeps its parameters and names (lora_a, lora_b added)."""

  def __init__(self, base: Dense, *, rank: int, alpha: float, dropout: float = 0.0, rngs: nnx.Rngs):
    if rank <= 0:
      raise ValueError(f"LoRA rank must be positive, got {rank}")
    self.base = base
    self.rank, self.alpha, self.dropout = int(rank), float(alpha), float(dropout)
    axes = tuple(base.kernel.get_metadata().get("logical_axes", (None, None)))
    pdt = base.kernel[...].dtype
    self.lora_a = param(rngs, _kaiming_uniform(base.in_features), (base.in_features, rank), pdt, (axes[0], None))
    self.lora_b = param(rngs, None, (rank, base.out_features), pdt, (None, axes[1]))
    self.merged = False

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def delta(self) -> jax.Array:
    """The update to the base kernel [in, out]."""
    return (self.lora_a[...] @ self.lora_b[...]) * self.scale

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.base(x)
    if self.merged:
      return y
    dtype = self.base.dtype or x.dtype
    h = x.astype(dtype)
    key = getattr(self, "dropout_key", None)
    if key is not None and self.dropout > 0:
      keep = jax.random.bernoulli(jax.random.wrap_key_data(key[...]), 1.0 - self.dropout, h.shape)
      h = jnp.where(keep, h / (1.0 - self.dropout), 0).astype(dtype)
    low = jnp.dot(h, self.lora_a[...].astype(dtype))
    return y + jnp.dot(low, self.lora_b[...].astype(dtype)) * jnp.asarray(self.scale, dtype)

  def merge(self) -> None:
    """Folds the update into the base kernel (forward unchanged; A and B kept for unmerge)."""
    if not self.merged:
      self.base.kernel.set_value(self.base.kernel[...] + self.delta().astype(self.base.kernel[...].dtype))
      self.merged = True

  def unmerge(self) -> None:
    if self.merged:
      self.base.kernel.set_value(self.base.kernel[...] - self.delta().astype(self.base.kernel[...].dtype))
      self.merged = False


def _children(module: nnx.Module):
  for name, value in list(vars(module).items()):
    if isinstance(value, nnx.Module):
      yield name, value
    elif isinstance(value, (list, tuple, nnx.List)):
      for item in value:
        if isinstance(item, nnx.Module):
          yield None, item


def apply_lora(module: nnx.Module, targets: Iterable[str], *, rank: int, alpha: float, dropout: float, rngs) -> int:
  """Wraps, in place, every Dense attribute of `module` (recursively) named in `targets`;
  returns how many were wrapped (0 is an error: the names match nothing)."""
  targets = set(targets)
  count = 0

  def visit(m):
    nonlocal count
    for name, child in _children(m):
      if name in targets and isinstance(child, Dense):
        setattr(m, name, LoRADense(child, rank=rank, alpha=alpha, dropout=dropout, rngs=rngs))
        count += 1
      elif not isinstance(child, LoRADense):
        visit(child)

  visit(module)
  if not count:
    raise ValueError(f"apply_lora: no Dense layer named any of {sorted(targets)} in {type(module).__name__}")
  return count


def lora_layers(module: nnx.Module) -> list[LoRADense]:
  return [m for _, m in nnx.iter_modules(module) if isinstance(m, LoRADense)]


def merge_lora(module: nnx.Module) -> nnx.Module:
  """Folds every LoRA update into its base kernel and puts the plain Dense back, in place."""

  def visit(m):
    for name, child in _children(m):
      if isinstance(child, LoRADense):
        child.merge()
        setattr(m, name, child.base)
      else:
        visit(child)

  visit(module)
  return module


@contextlib.contextmanager
def lora_dropout(module: nnx.Module, key: jax.Array | None):
  """Dropout on every LoRA input for the calls inside the block (one key split per layer)."""
  layers = [] if key is None else lora_layers(module)
  if layers:
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
      key = jax.random.wrap_key_data(key)  # a raw uint32 key
    for layer, k in zip(layers, jax.random.split(key, len(layers))):
      layer.dropout_key = LoRADropoutKey(jax.random.key_data(k))
  try:
    yield
  finally:
    for layer in layers:
      del layer.dropout_key


def _swap(module: nnx.Module, wrapped: bool, store: list):
  """Replaces each LoRADense by its base (recording where), or puts the recorded ones back."""
  if wrapped:
    for parent, name, layer in store:
      setattr(parent, name, layer)
    return

  def visit(m):
    for name, child in _children(m):
      if isinstance(child, LoRADense):
        store.append((m, name, child))
        setattr(m, name, child.base)
      else:
        visit(child)

  visit(module)


@contextlib.contextmanager
def lora_unwrapped(module: nnx.Module, merged: bool = False):
  """Inside the block `module` has plain Dense layers with the base parameters (for loaders and
  exporters written for the plain model); with merged=True the LoRA updates are folded in.
  Afterwards the wrappers (and the unmerged base kernels) are back."""
  store: list = []
  layers = lora_layers(module)
  if merged:
    for layer in layers:
      layer.merge()
  _swap(module, False, store)
  try:
    yield module
  finally:
    _swap(module, True, store)
    if merged:
      for layer in layers:
        layer.unmerge()
