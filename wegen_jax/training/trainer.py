"""The training loop shared by every system (see training.task.Task).

Sharded init straight onto the mesh, trainable/frozen split (frozen parameters get no
gradients and no optimizer state), gradient accumulation over micro-batches inside one
jitted step, parameter-row masks and a post-update hook from the task, periodic evaluators
from config.evals, AdamW per config, async Orbax checkpoints with the data-iterator state, exact
resume, metrics, and a hard stop on a non-finite loss or state that keeps only good checkpoints
(docs/RELIABILITY.md: the guarantees and the tests that check them).
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from wegen_jax.data.loader import DeviceLoader
from wegen_jax.parallel import activation_sharding, create_sharded, logical_to_spec, make_mesh
from wegen_jax.layers.paths import path_string
from wegen_jax.training.checkpointing import Checkpointer, abstract_like, load_run_parameters
from wegen_jax.training.compile_cache import use_compilation_cache
from wegen_jax.training.evals import build_evaluators, due, run_evaluators
from wegen_jax.training.flops import jaxpr_flops
from wegen_jax.training.metrics import MetricsWriter, device_peak_flops
from wegen_jax.training.optim import make_optimizer, make_schedule, optimized_tree
from wegen_jax.training.task import get_task
from wegen_jax.training.validation import check_training_config
from wegen_jax.training.workdir_lock import WorkdirLock


class NonFiniteLossError(RuntimeError):
  pass


@dataclasses.dataclass
class TrainResult:
  step: int
  losses: dict[int, float]
  workdir: Path


def _micro_batches(batch, accum: int):
  """[B, ...] -> [accum, B/accum, ...] with micro-batch k = rows k, k+accum, ... so every
  micro-batch stays spread over all data shards."""

  def split(x):
    if x.shape[0] % accum:
      raise ValueError(f"batch of {x.shape[0]} does not split into grad_accum={accum} micro-batches")
    return jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1)

  return jax.tree.map(split, batch)


def init_components(model, run_dir: str | Path, prefixes: tuple[str, ...]) -> None:
  """Copies the parameters under `prefixes` (e.g. 'unet') from another run's newest checkpoint,
  as stage 2 starts from stage 1's detokenizer. The trainer skips this when resuming."""
  step = load_run_parameters(model, run_dir, prefixes=prefixes)
  print(f"initialised {', '.join(prefixes)} from {run_dir} step {step}", flush=True)


def row_masks(task, params):
  """Per-leaf boolean masks from task.trainable_rows (None where the whole leaf trains)."""

  def mask(path, leaf):
    rows = task.trainable_rows(path_string(path))
    if rows is None:
      return None
    rows = jnp.asarray(rows, bool)
    try:
      jnp.broadcast_shapes(rows.shape, leaf.shape)
    except ValueError:
      raise ValueError(
        f"trainable_rows({path_string(path)!r}) has shape {rows.shape}, not broadcastable to the parameter's {leaf.shape}"
      ) from None
    return rows

  return jax.tree_util.tree_map_with_path(mask, params)


def _masked(tree, masks):
  return jax.tree.map(
    lambda x, m: x if m is None else jnp.where(m, x, 0).astype(x.dtype), tree, masks, is_leaf=lambda x: x is None
  )


def build_train_step(task, graphdef, tx, accum: int, schedule, masks=None):
  """masks (row_masks): rows outside a mask get no gradient (clipping and grad_norm see only
  what trains) and no update (so weight decay leaves them alone either)."""

  def loss_of(params, frozen, batch, rng):
    return task.loss_fn(nnx.merge(graphdef, params, frozen), batch, rng)

  grad_fn = jax.value_and_grad(loss_of, has_aux=True)

  def train_step(params, frozen, opt_state, batch, rng, step):
    if accum == 1:
      (loss, aux), grads = grad_fn(params, frozen, batch, rng)
    else:

      def body(carry, micro):
        mb, r = micro
        (l, a), g = grad_fn(params, frozen, mb, r)
        return jax.tree.map(jnp.add, carry, (l, a, g)), None

      (l0, a0), g0 = jax.eval_shape(
        grad_fn, params, frozen, jax.tree.map(lambda x: x[0], _micro_batches(batch, accum)), rng
      )
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (l0, a0, g0))
      (loss, aux, grads), _ = jax.lax.scan(body, zeros, (_micro_batches(batch, accum), jax.random.split(rng, accum)))
      loss, aux, grads = jax.tree.map(lambda x: x / accum, (loss, aux, grads))
    if masks is not None:
      grads = _masked(grads, masks)
    updates, opt_state = tx.update(grads, opt_state, params)
    if masks is not None:
      updates = _masked(updates, masks)
    params = task.after_update(optax.apply_updates(params, updates), step)
    metrics = dict(aux, loss=loss, grad_norm=optax.tree.norm(grads), lr=schedule(step))
    return params, opt_state, metrics

  return train_step


def optimizer_shardings(opt_state, params, mesh):
  """Shardings for the optimizer state: each moment leaf takes the sharding of the parameter
  (or stack of parameters: optim.optimized_tree) whose tree path ends its own (optax nests
  that tree inside its states), the rest
  (step counts) is replicated. Without this, jit(tx.init) puts the whole state on one device:
  its outputs depend on no sharded input."""
  by_path = {tuple(map(str, path)): p for path, p in jax.tree_util.tree_flatten_with_path(params)[0]}
  replicated = NamedSharding(mesh, PartitionSpec())

  def sharding(path, leaf):
    keys = tuple(map(str, path))
    for start in range(len(keys)):
      p = by_path.get(keys[start:])
      if p is not None and p.shape == leaf.shape:
        return p.sharding
    return replicated

  return jax.tree_util.tree_map_with_path(sharding, opt_state)


@dataclasses.dataclass
class TrainStep:
  """The jitted train step and the layouts it expects: one builder for the trainer and for
  wegen_jax.tools.aot, so the ahead-of-time fit check compiles exactly what trains."""

  step_fn: Callable  # (params, frozen, opt_state, batch, rng, step) -> (params, opt_state, metrics)
  tx: optax.GradientTransformation
  schedule: Callable
  param_shardings: Any
  opt_shardings: Any
  batch_sharding: Callable[[str], NamedSharding]  # per batch field name


def make_train_step(task, config, mesh, graphdef, params) -> TrainStep:
  """params: the trainable nnx State, concrete or abstract (ShapeDtypeStructs with shardings)."""
  rules = config.get("sharding_rules")
  labels = jax.tree_util.tree_map_with_path(lambda p, _: task.param_group(path_string(p)), params)
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  tx = make_optimizer(config.optimizer, labels, params=params, shardings=param_shardings)
  schedule = make_schedule(config.optimizer)
  optimized = optimized_tree(config.optimizer, params, labels, param_shardings)
  opt_shardings = optimizer_shardings(jax.eval_shape(tx.init, params), optimized, mesh)
  masks = row_masks(task, params)
  if all(m is None for m in jax.tree.leaves(masks, is_leaf=lambda x: x is None)):
    masks = None
  step = build_train_step(task, graphdef, tx, int(config.get("grad_accum", 1)), schedule, masks)

  def step_in_mesh(*args):  # activations are annotated for this mesh while the step traces
    with activation_sharding(mesh, rules):
      return step(*args)

  step_fn = jax.jit(step_in_mesh, donate_argnums=(0, 2), out_shardings=(param_shardings, opt_shardings, None))
  batch_sharding = lambda name: NamedSharding(mesh, logical_to_spec(task.batch_axes(name), None, mesh, rules))
  return TrainStep(step_fn, tx, schedule, param_shardings, opt_shardings, batch_sharding)


def _all_finite(tree) -> jax.Array:
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves])) if leaves else jnp.array(True)


all_finite = jax.jit(_all_finite)


def train(config, workdir: str | Path, *, stop_at: int | None = None) -> TrainResult:
  """Trains `config.task` to `config.total_steps`, resuming from WORKDIR/checkpoints.

  stop_at: save and return after this step (as a preempted job would), schedules unchanged.
  config.num_devices (optional): use only the first N devices (e.g. 1 for a reference run).
  Raises ConfigError (bad config or paths, before anything is built), WorkdirBusyError (another
  trainer holds WORKDIR), CheckpointMismatchError (the checkpoint is of another model) and
  NonFiniteLossError (a non-finite loss, gradient or state; nothing of it is saved).
  """
  workdir = Path(workdir)
  task = get_task(config)
  check_training_config(config, workdir)
  task.check_config()
  workdir.mkdir(parents=True, exist_ok=True)
  with WorkdirLock(workdir, jax.process_index()):
    return _train(task, config, workdir, stop_at)


def _train(task, config, workdir: Path, stop_at: int | None) -> TrainResult:
  use_compilation_cache(config.get("compilation_cache_dir"))
  devices = jax.devices()[: config.get("num_devices", 0) or None]
  mesh = make_mesh(dict(config.mesh), devices=devices)
  rules = config.get("sharding_rules")

  ckpt = Checkpointer(
    workdir / "checkpoints", keep=config.get("keep_checkpoints", 3), async_save=config.get("async_checkpoints", True)
  )
  model = create_sharded(lambda: task.build_model(nnx.Rngs(config.seed)), mesh, rules)
  if not ckpt.all_steps():  # a resumed run has its own parameters
    task.init_pretrained(model)
    if config.get("init_from"):
      init_components(model, config.init_from, task.init_components())
  graphdef, params, frozen = nnx.split(model, task.trainable(), ...)
  train_step = make_train_step(task, config, mesh, graphdef, params)
  opt_state = jax.jit(train_step.tx.init, out_shardings=train_step.opt_shardings)(params)

  evaluators = build_evaluators(config.get("evals"))  # before compiling: a bad spec fails at once
  data = task.dataset("train", seed=config.seed, global_batch=config.batch_size)
  loader = DeviceLoader(data, lambda name, local: train_step.batch_sharding(name))

  state = {"params": params, "frozen": frozen, "opt": opt_state}
  step = 0
  restored = ckpt.restore_latest(abstract_like(state, mesh), config=config.to_dict())
  if restored is not None:
    step, state, data_state = restored
    loader.set_state(data_state)
    print(f"resumed from step {step} in {ckpt.directory}", flush=True)
  params, frozen, opt_state = state["params"], state["frozen"], state["opt"]

  step_fn = train_step.step_fn
  base_rng = jax.random.key(config.seed)
  writer = MetricsWriter(workdir, total_steps=config.total_steps, resumed_step=step if restored else None)
  (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str))
  stop = {"signal": None}
  previous = signal.signal(signal.SIGTERM, lambda s, f: stop.update(signal=s))  # preemption notice

  flops_per_step, peak = None, None
  losses: dict[int, float] = {}
  # Throughput windows exclude checkpoint and evaluation time (reported as checkpoint_s / eval_s).
  window = {"start": time.perf_counter(), "counts": {}, "steps": 0, "paused": 0.0, "checkpoint_s": 0.0, "eval_s": 0.0}

  # A checkpoint is good once the loss computed on its parameters (the next step's) is finite:
  # `unconfirmed` is the newest saved (or restored) step whose next loss is not read yet.
  unconfirmed = step if restored is not None else None

  def record(done: int, metrics: dict, counts: dict[str, float]):
    """Checks and logs a finished step's metrics (reading them waits for that step only)."""
    nonlocal unconfirmed, peak
    loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
    losses[done] = loss
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
      if unconfirmed == done - 1:  # the saved state itself gives this loss: it is not a good one
        ckpt.discard(unconfirmed, f"its parameters give loss {loss}, grad norm {grad_norm}")
      good = ckpt.all_steps()
      where = f"step {good[-1]} in {ckpt.directory}" if good else f"none (no step in {ckpt.directory} is good)"
      raise NonFiniteLossError(
        f"loss {loss}, grad norm {grad_norm} at step {done}: stopping without saving this state. The last good "
        f"checkpoint is {where}; lower the learning rate or check the data, then rerun to resume from it"
      )
    if unconfirmed == done - 1:
      unconfirmed = None
    window["steps"] += 1
    for k, v in counts.items():
      window["counts"][k] = window["counts"].get(k, 0.0) + v
    if done % config.log_every == 0 or done == config.total_steps:
      seconds = time.perf_counter() - window["start"] - window["paused"]
      logged = {k: float(v) for k, v in metrics.items()}
      logged.update({f"{k}_per_s": v / seconds for k, v in window["counts"].items()})
      if flops_per_step:
        achieved = flops_per_step * window["steps"] / seconds
        if devices[0].platform == "cpu" and achieved > peak:  # the start-up matmul ran on a busier host
          peak = achieved
        logged["mfu"] = achieved / peak
      logged.update({k: window[k] for k in ("checkpoint_s", "eval_s") if window[k]})
      writer.write(done, logged)
      window.update(start=time.perf_counter(), counts={}, steps=0, paused=0.0, checkpoint_s=0.0, eval_s=0.0)

  def paused(kind: str, began: float) -> None:
    seconds = time.perf_counter() - began
    window["paused"] += seconds
    window[kind] += seconds

  def save(done: int) -> None:
    nonlocal unconfirmed
    began = time.perf_counter()
    if not bool(all_finite({"params": params, "opt": opt_state})):
      raise NonFiniteLossError(
        f"the parameters or optimizer state after step {done} are not finite: stopping without saving them. "
        f"The newest checkpoint is step {ckpt.all_steps()[-1] if ckpt.all_steps() else None} in {ckpt.directory}; "
        "lower the learning rate or check the data, then rerun to resume from it"
      )
    ckpt.save(done, {"params": params, "frozen": frozen, "opt": opt_state}, loader.get_state(), config.to_dict())
    unconfirmed = done
    paused("checkpoint_s", began)

  pending = None  # the last dispatched step's (step, metrics, counts), not yet read
  try:
    with activation_sharding(mesh, rules):
      while step < config.total_steps:
        batch = next(loader)
        rng = jax.random.fold_in(base_rng, step)
        if flops_per_step is None:  # global matmul/conv FLOPs (training/flops.py)
          flops_per_step = jaxpr_flops(step_fn.trace(params, frozen, opt_state, batch, rng, step).jaxpr)
          peak = device_peak_flops(devices)
          window["start"] = time.perf_counter()  # throughput excludes compilation
        params, opt_state, metrics = step_fn(params, frozen, opt_state, batch, rng, step)
        step += 1
        # The previous step's metrics are read only now, with this step already queued: the
        # device never idles while the host waits for a loss (the checks lag one step).
        if pending is not None:
          record(*pending)
        pending = (step, metrics, task.batch_counts(batch))
        stopping = stop["signal"] or step == stop_at
        due_now = [n for n, e in evaluators.items() if due(e, step, config.total_steps)]
        if due_now:
          record(*pending)  # evaluate only a state whose loss has been checked
          pending = None
          began = time.perf_counter()
          model_now = nnx.merge(graphdef, params, frozen)
          writer.write(step, run_evaluators(evaluators, task.predict_fns(model_now), step, workdir, due_now))
          paused("eval_s", began)
        if step % config.ckpt_every == 0 or step == config.total_steps or stopping:
          if pending is not None:
            record(*pending)  # never save a state whose loss has not been checked
            pending = None
          save(step)
        if stopping:
          print(
            f"stopping at step {step} ({'signal ' + str(stop['signal']) if stop['signal'] else 'stop_at'}); "
            "rerun to resume",
            flush=True,
          )
          break
  finally:
    signal.signal(signal.SIGTERM, previous)
    ckpt.close()
    writer.close()
    loader.close()
  return TrainResult(step, losses, workdir)
