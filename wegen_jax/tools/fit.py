"""What a config's train step needs on a TPU slice: the trainer's own step lowered with abstract
inputs onto compile-only devices, its memory, FLOPs and a step-time estimate (the library
behind `python -m wegen_jax.tools.aot`, which owns the flags)."""

from __future__ import annotations

import os
import re
import time

from wegen_jax.parallel.sharding import terse_tracer_errors
from wegen_jax.training.flops import jaxpr_flops

GiB = 1 << 30
EXIT_DOES_NOT_FIT = 1
EXIT_BAD_INPUT = 2


def abstract_inputs(config, devices):
  """(train_step, args) with every argument a ShapeDtypeStruct carrying its sharding, exactly
  as the trainer would pass them on `devices`."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from jax.sharding import NamedSharding, PartitionSpec

  from wegen_jax.parallel import make_mesh, state_shardings
  from wegen_jax.training.task import get_task
  from wegen_jax.training.trainer import make_train_step

  task = get_task(config)
  mesh = make_mesh(dict(config.mesh), devices=devices)
  with terse_tracer_errors():
    model = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(config.seed)))
  graphdef, params, frozen = nnx.split(model, task.trainable(), ...)

  def placed(state):
    shardings = state_shardings(state, mesh, config.get("sharding_rules"))
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)

  params, frozen = placed(params), placed(frozen)
  train_step = make_train_step(task, config, mesh, graphdef, params)
  opt_state = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    jax.eval_shape(train_step.tx.init, params),
    train_step.opt_shardings,
  )
  batch = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=train_step.batch_sharding(k))
    for k, v in task.batch_spec(config.batch_size).items()
  }
  replicated = NamedSharding(mesh, PartitionSpec())
  key = jax.eval_shape(lambda: jax.random.key(0))
  rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated)
  step = jax.ShapeDtypeStruct((), jnp.int32, weak_type=True, sharding=replicated)
  return task, mesh, train_step, (params, frozen, opt_state, batch, rng, step)


def count_params(tree, prefix: str | None = None) -> int:
  import jax
  import numpy as np

  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return int(
    sum(np.prod(x.shape) for path, x in leaves if prefix is None or str(getattr(path[0], "key", "")) == prefix)
  )


def describe(config, task, mesh, args) -> dict:
  """Static facts of the run: sizes, batch, mesh, remat, and the 6*N*tokens analytic FLOPs."""
  params, frozen, _, batch, _, _ = args
  tokens = task.batch_counts(batch).get("tokens", 0.0)
  # 6*N*tokens counts the token-wise matmuls of the trainable parameters under the task's
  # token_params_prefix (the whole LM; WeGen's LLM part); None where it does not apply.
  prefix = task.token_params_prefix()
  n_token = count_params(params, prefix or None) if prefix is not None else 0
  model = config.model
  return dict(
    trainable_params=count_params(params),
    frozen_params=count_params(frozen),
    global_batch=int(config.batch_size),
    grad_accum=int(config.get("grad_accum", 1)),
    tokens_per_step=tokens,
    mesh=dict(mesh.shape),
    remat=task.remat_summary(),
    dtype=model.get("dtype"),
    analytic_flops=6.0 * n_token * tokens if n_token and tokens else None,
  )


def memory(compiled) -> dict:
  m = compiled.memory_analysis()
  out = dict(
    arguments=m.argument_size_in_bytes,
    outputs=m.output_size_in_bytes,
    aliased=m.alias_size_in_bytes,
    temporaries=m.temp_size_in_bytes,
    generated_code=m.generated_code_size_in_bytes,
  )
  # donated params/optimizer state alias their outputs: count those bytes once
  out["total"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"] + out["generated_code"]
  return out


def per_chip_bytes(tree) -> int:
  """Bytes of one chip's shards of a tree of sharded ShapeDtypeStructs."""
  import jax
  import numpy as np

  return int(sum(np.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def levers(mem: dict, report: dict) -> list[str]:
  """What would shrink the dominant part of per-chip memory."""
  state = report["per_chip_state_bytes"]
  tips = []
  if state >= mem["temporaries"]:
    tips.append(
      "parameters + optimizer state dominate: shard them over more chips (a larger slice with "
      "--config.mesh.fsdp=-1, or --config.mesh.tensor=N for tensor parallelism)"
    )
  # remat switches that are still off, as config overrides
  flag = {
    "llm": "--config.model.llm.remat=full",
    "unet": "--config.model.unet_remat=True",
    "model": "--config.model.remat=full",
  }
  off = [flag[k] for k, v in report["remat"].items() if v in (None, False, "none")]
  if off:
    tips.append(f"activations: rematerialise in the backward pass ({' '.join(off)})")
  tips += [
    f"a smaller per-chip batch: --config.batch_size=<less than {report['global_batch']}>",
    f"gradient accumulation at the same global batch: --config.grad_accum={2 * report['grad_accum']} "
    "(activations of one micro-batch only)",
  ]
  if state < mem["temporaries"]:
    tips.append("more chips also split the batch further (--config.mesh.fsdp=-1 on a larger slice)")
  return tips


def run(config, topology: str, mfu: float, hbm_gib: float | None = None) -> dict:
  """Compiles the train step of `config` for `topology`; the report as a dict."""
  from wegen_jax.tools.topology import get_slice

  sl = get_slice(topology)
  task, mesh, train_step, args = abstract_inputs(config, sl.devices)
  report = dict(
    topology=topology,
    chips=sl.chips,
    device_kind=sl.devices[0].device_kind,
    hbm_bytes=int(hbm_gib * GiB) if hbm_gib else sl.hbm_bytes,
    mfu=mfu,
    **describe(config, task, mesh, args),
  )
  report["per_chip_batch_bytes"] = per_chip_bytes(args[3])
  report["per_chip_state_bytes"] = per_chip_bytes(args[:3])  # params, frozen, optimizer state
  start = time.perf_counter()
  with terse_tracer_errors():
    traced = train_step.step_fn.trace(*args)
    lowered = traced.lower()
  report["lower_s"] = time.perf_counter() - start
  # From the jaxpr, not XLA's cost analysis: XLA counts a loop body once, and both the
  # grad-accumulation scan and scanned layers are loops. Includes remat recomputation.
  report["flops_per_chip"] = jaxpr_flops(traced.jaxpr) / sl.chips
  # MFU counts model FLOPs: 6*N*tokens where it covers the whole model (the LM), else the
  # program's matmul/conv count (which also holds remat recomputation: a pessimistic estimate).
  whole = task.analytic_flops_cover_model and report["analytic_flops"]
  report["step_flops_basis"] = "6*N*tokens" if whole else "program"
  model_flops = report["analytic_flops"] if whole else report["flops_per_chip"] * sl.chips
  report["step_s"] = model_flops / (sl.chips * sl.peak_flops * mfu) if model_flops else None
  report["peak_flops"] = sl.peak_flops
  try:
    compiled = lowered.compile()
  except Exception as e:  # libtpu refuses programs that exceed HBM: RESOURCE_EXHAUSTED
    text = str(e)
    if "RESOURCE_EXHAUSTED" not in text:
      raise
    report.update(
      compile_s=time.perf_counter() - start - report["lower_s"], fits=False, compiler_error=text.splitlines()[0][:500]
    )
    needed = re.search(r"HLO temporaries \(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)", text)
    if needed:  # the compiler stops at the temporaries: arguments come on top
      temps, report["hbm_bytes"] = (int(float(g) * GiB) for g in needed.groups())
      report["memory"] = dict(
        arguments=report["per_chip_state_bytes"] + report["per_chip_batch_bytes"], temporaries=temps, at_least=True
      )
      report["memory"]["total"] = report["memory"]["arguments"] + temps
    return report
  report["compile_s"] = time.perf_counter() - start - report["lower_s"]
  report["memory"] = memory(compiled)
  report["fits"] = report["memory"]["total"] <= report["hbm_bytes"]
  return report


def dump_to(directory: str) -> None:
  """Makes XLA (jaxlib's and libtpu's) dump the train step's optimised HLO and buffer
  assignment into `directory`; call before the first compile."""
  os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), f"--xla_dump_to={directory}", "--xla_dump_hlo_module_re=.*step_in_mesh.*"]
  ).strip()


def largest_buffers(directory: str, n: int) -> dict:
  """From the newest memory-usage report in `directory`: the heap size of the device's default
  memory space and its `n` largest buffer slots (bytes, the values that share the slot)."""
  import glob

  reports = sorted(glob.glob(os.path.join(directory, "*memory-usage-report.txt")), key=os.path.getmtime)
  if not reports:
    raise FileNotFoundError(f"no *memory-usage-report.txt in {directory}: did the compile run with --buffers?")
  text = open(reports[-1]).read().split("Memory Space:")[1]  # the first space: HBM
  units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": GiB}
  slots = []
  for m in re.finditer(r"^\s*[\d.]+\w+\(\s*\d+%\);\s*([\d.]+)(\w+);\s*\d+;\s*\d+;\s*(.*)$", text, re.M):
    slots.append((float(m.group(1)) * units[m.group(2)], m.group(3).strip()))
  total = re.search(r"Total bytes: (\d+)", text)
  return dict(
    report=reports[-1],
    heap_bytes=int(total.group(1)) if total else None,
    largest=sorted(slots, key=lambda x: -x[0])[:n],
  )


def gib(b: float) -> str:
  return f"{b / GiB:.2f} GiB" if b >= GiB / 10 else f"{b / (1 << 20):.1f} MiB"


def format_report(r: dict) -> str:
  count = lambda n: f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"
  lines = [
    f"topology      {r['topology']}: {r['chips']} chips ({r['device_kind']}), HBM {gib(r['hbm_bytes'])} per chip",
    f"mesh          {r['mesh']}   remat {r['remat']}   dtype {r['dtype']}",
    f"batch         global {r['global_batch']}, grad_accum {r['grad_accum']}, {r['tokens_per_step']:.0f} tokens/step",
    f"parameters    trainable {count(r['trainable_params'])}, frozen {count(r['frozen_params'])}",
    f"compile       lower {r['lower_s']:.0f} s, compile {r['compile_s']:.0f} s",
  ]
  lines.append(
    f"state/chip    parameters + optimizer state {gib(r['per_chip_state_bytes'])}, "
    f"batch {gib(r['per_chip_batch_bytes'])}"
  )
  m = r.get("memory")
  if m and m.get("at_least"):
    lines.append(f"compiler      {r['compiler_error']}")
    lines.append(
      f"memory/chip   at least {gib(m['total'])} (arguments {gib(m['arguments'])} + temporaries "
      f"{gib(m['temporaries'])}) of {gib(r['hbm_bytes'])}"
    )
  elif m:
    lines.append(
      f"memory/chip   arguments {gib(m['arguments'])}, outputs {gib(m['outputs'])} "
      f"(aliased {gib(m['aliased'])}), temporaries {gib(m['temporaries'])}, "
      f"code {gib(m['generated_code'])}"
    )
    lines.append(
      f"              total {gib(m['total'])} of {gib(r['hbm_bytes'])} ({100 * m['total'] / r['hbm_bytes']:.0f}%)"
    )
  if not m and "compiler_error" in r:
    lines.append(f"compiler      {r['compiler_error']}")
  f = r["flops_per_chip"]
  lines.append(
    f"FLOPs/step    {f * r['chips']:.3e} (matmuls and convolutions of the program, remat "
    f"included; {f:.3e} per chip)" + (f"; 6*N*tokens {r['analytic_flops']:.3e}" if r["analytic_flops"] else "")
  )
  if r["step_s"]:
    lines.append(
      f"step time     {r['step_s']:.2f} s at {100 * r['mfu']:.0f}% MFU "
      f"({r['step_flops_basis']} FLOPs, {r['peak_flops'] / 1e12:.0f} TFLOP/s bf16 peak per chip)"
      + ("" if r.get("fits", True) else "; if it fit")
    )
  return "\n".join(lines)
