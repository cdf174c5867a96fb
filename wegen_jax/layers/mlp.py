"""Feed-forward blocks: gated (SwiGLU / GeGLU, Llama & Qwen) and plain (OPT, ViT)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wegen_jax.layers.linear import Dense

ACTIVATIONS = {
  "silu": jax.nn.silu,
  "swish": jax.nn.silu,
  "relu": jax.nn.relu,
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
  "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
  "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),  # diffusers' act_fn="mish"
}


def activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


class GatedMLP(nnx.Module):
  """down(act(gate(x)) * up(x))."""

  def __init__(
    self,
    features: int,
    hidden: int,
    *,
    act: str = "silu",
    use_bias: bool = False,
    dtype=None,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.act = act
    self.gate = Dense(features, hidden, axes=("embed", "mlp"), **kw)
    self.up = Dense(features, hidden, axes=("embed", "mlp"), **kw)
    self.down = Dense(hidden, features, axes=("mlp", "embed"), **kw)

  def __call__(self, x):
    return self.down(activation(self.act)(self.gate(x)) * self.up(x))


class MLP(nnx.Module):
  """fc2(act(fc1(x)))."""

  def __init__(
    self,
    features: int,
    hidden: int,
    *,
    act: str = "gelu",
    use_bias: bool = True,
    out_features: int | None = None,
    dtype=None,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.act = act
    self.fc1 = Dense(features, hidden, axes=("embed", "mlp"), **kw)
    self.fc2 = Dense(hidden, out_features or features, axes=("mlp", "embed"), **kw)

  def __call__(self, x):
    return self.fc2(activation(self.act)(self.fc1(x)))
