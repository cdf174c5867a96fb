"""Matmul and convolution FLOPs of a traced program, counted from its jaxpr.

XLA's cost analysis counts a loop body once, so with scanned layers (layers/scan.py) or
gradient accumulation it under-counts by the trip counts. Here a `scan` multiplies its body by
its length, `cond` takes its costliest branch and a Pallas kernel counts its body once per grid
cell. The count is global (traced shapes are global) and includes what the program recomputes
under remat. Elementwise ops are left out: on TPU/GPU the MXU/tensor-core work is the FLOPs MFU
refers to.
"""

from __future__ import annotations

import math

from jax.extend import core


def jaxpr_flops(jaxpr) -> float:
  """2 x multiply-adds of every dot_general and convolution in `jaxpr` (Jaxpr or ClosedJaxpr)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  return float(sum(_eqn_flops(e) for e in jaxpr.eqns))


def _eqn_flops(eqn) -> float:
  name = eqn.primitive.name
  if name == "dot_general":
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
  if name == "conv_general_dilated":
    rhs = eqn.invars[1].aval.shape
    out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
    per_output = math.prod(rhs) // rhs[out_feature_dim]  # in/groups x kernel window
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output
  subs = [_sub_flops(v) for v in eqn.params.values()]
  if name == "cond":
    return max((f for f in subs if f is not None), default=0.0)
  inner = sum(f for f in subs if f is not None)
  if name == "scan":
    return inner * eqn.params["length"]
  if name == "pallas_call":
    grid = getattr(eqn.params.get("grid_mapping"), "grid", ()) or ()
    return inner * math.prod(g for g in grid if isinstance(g, int))
  return inner  # pjit, remat, custom_vjp/jvp, shard_map, while (trip count unknown: once)


def _sub_flops(value) -> float | None:
  if isinstance(value, (core.Jaxpr, core.ClosedJaxpr)):
    return jaxpr_flops(value)
  if isinstance(value, (tuple, list)) and value and all(isinstance(v, (core.Jaxpr, core.ClosedJaxpr)) for v in value):
    return max(jaxpr_flops(v) for v in value)  # cond branches
  return None
