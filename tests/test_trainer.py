"""The shared trainer on the LM task: learning, exact resume (also after SIGKILL), corrupt
checkpoints, non-finite losses, gradient accumulation, and sharding."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lm_runs import config, logged_losses, saved_steps
from wegen_jax.training.trainer import NonFiniteLossError, train
from sharding_harness import MESHES, mesh_id

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("full")
  return train(config(), workdir)


def test_loss_falls_tenfold(tmp_path):
  result = train(
    config(
      **{
        "total_steps": 150,
        "log_every": 50,
        "ckpt_every": 150,
        "model.num_layers": 2,
        "data.seq_len": 64,
        "optimizer.lr": 5e-3,
      }
    ),
    tmp_path,
  )
  assert result.losses[150] < result.losses[1] / 10, (result.losses[1], result.losses[150])
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [50, 100, 150]
  assert {"loss", "loss_ce", "lr", "grad_norm", "tokens_per_s", "mfu"} <= set(records[-1])
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_stop_and_resume_is_exact(uninterrupted, tmp_path):
  first = train(config(), tmp_path, stop_at=6)
  assert first.step == 6
  second = train(config(), tmp_path)
  assert min(second.losses) == 7  # resumed after step 6, no step repeated
  for step, loss in uninterrupted.losses.items():
    merged = {**first.losses, **second.losses}
    assert abs(merged[step] - loss) <= 1e-6, step


def test_stacked_optimizer_trains_and_resumes_as_the_per_leaf_one(uninterrupted, tmp_path):
  """optimizer.stack_leaves on a 2x2x2 mesh: stopped, resumed from its stacked optimizer state,
  the same losses as the per-leaf AdamW's uninterrupted run."""
  stacked = {"optimizer.stack_leaves": True, "mesh": {"data": 2, "fsdp": 2, "tensor": 2}}
  first = train(config(**stacked), tmp_path, stop_at=6)
  second = train(config(**stacked), tmp_path)
  assert min(second.losses) == 7
  merged = {**first.losses, **second.losses}
  for step, loss in uninterrupted.losses.items():
    assert abs(merged[step] - loss) <= 1e-5 * abs(loss), step


def test_data_iterator_resumes_without_repeating_or_skipping():
  import grain
  from wegen_jax.data.loader import DeviceLoader, process_batches
  from wegen_jax.systems.lm.task import ProgressionSource
  import jax

  source = grain.MapDataset.source(ProgressionSource(20, 4, 32, 0)).shuffle(seed=1)
  sharding = lambda name, x: jax.sharding.SingleDeviceSharding(jax.devices()[0])
  loader = DeviceLoader(process_batches(source, 4), sharding, prefetch=3)
  seen = [np.asarray(next(loader)["record_id"]) for _ in range(3)]
  state = loader.get_state()
  rest = [np.asarray(next(loader)["record_id"]) for _ in range(4)]
  again = DeviceLoader(process_batches(source, 4), sharding)
  again.set_state(state)
  np.testing.assert_array_equal([np.asarray(next(again)["record_id"]) for _ in range(4)], rest)
  first_epoch = np.concatenate(seen + rest[:2])
  assert sorted(first_epoch) == list(range(20))  # one epoch: every record exactly once


def test_sigkill_mid_run_resumes_exactly(uninterrupted, tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "wegen_jax.train",
    "--config",
    "configs/lm_train.py",
    "--workdir",
    str(tmp_path),
    "--config.total_steps=12",
    "--config.log_every=1",
    "--config.ckpt_every=4",
    "--config.data.seq_len=32",
    "--config.model.num_layers=1",
    "--config.async_checkpoints=True",
  ]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if any(s >= 4 for s in saved_steps(tmp_path)):
      break
    time.sleep(0.05)
  killed = proc.poll() is None
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  assert killed, "the run finished before it could be killed; the test needs a slower run"
  losses = logged_losses(tmp_path)
  assert sorted(losses) == list(range(1, 13))
  for step, loss in uninterrupted.losses.items():
    assert abs(losses[step] - loss) <= 1e-6, step


def test_corrupt_latest_checkpoint_falls_back(uninterrupted, tmp_path, caplog):
  train(config(), tmp_path, stop_at=8)  # checkpoints at 4 and 8
  for f in (tmp_path / "checkpoints" / "8" / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"corrupt")
  result = train(config(), tmp_path)
  assert min(result.losses) == 5  # resumed from step 4
  assert any("unreadable" in r.message for r in caplog.records)
  for step in range(5, 13):
    assert abs(result.losses[step] - uninterrupted.losses[step]) <= 1e-6


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  c = config(
    **{"optimizer.lr": 1e6, "optimizer.grad_clip": 0.0, "optimizer.warmup_steps": 0, "total_steps": 40, "ckpt_every": 2}
  )
  with pytest.raises(NonFiniteLossError, match="last good checkpoint is"):
    train(c, tmp_path)
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  saved = saved_steps(tmp_path)
  assert all(np.isfinite(r["loss"]) for r in lines) and all(s <= len(lines) for s in saved)


def test_gradient_accumulation_matches_full_batch(uninterrupted, tmp_path):
  result = train(config(grad_accum=2, total_steps=4, ckpt_every=4), tmp_path)
  for step in range(1, 5):
    assert abs(result.losses[step] - uninterrupted.losses[step]) <= 1e-5


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
  return train(config(total_steps=3, ckpt_every=3, num_devices=1, mesh={"fsdp": 1}), tmp_path_factory.mktemp("one"))


@pytest.mark.parametrize("shape", MESHES, ids=mesh_id)
def test_same_losses_on_any_mesh(shape, single_device, tmp_path):
  sharded = train(config(total_steps=3, ckpt_every=3, mesh=dict(zip(("data", "fsdp", "tensor"), shape))), tmp_path)
  for step in (1, 2, 3):
    assert abs(sharded.losses[step] - single_device.losses[step]) <= 1e-5 * abs(single_device.losses[step])


def test_init_from_copies_components_of_another_run(uninterrupted, tmp_path):
  """Stage chaining: start a run from another run's parameters of chosen components."""
  from wegen_jax.training.checkpointing import latest_parameters

  c = config(total_steps=1, ckpt_every=1, init_from=str(uninterrupted.workdir), init_components=("embed",))
  c.optimizer.lr = 0.0
  result = train(c, tmp_path)
  _, before = latest_parameters(uninterrupted.workdir / "checkpoints")
  _, after = latest_parameters(tmp_path / "checkpoints")
  np.testing.assert_array_equal(np.asarray(after["embed.embedding"]), np.asarray(before["embed.embedding"]))
  assert not np.array_equal(np.asarray(after["final_norm.scale"]) + 0, np.asarray(before["final_norm.scale"]))
  assert result.step == 1


def test_compilation_cache_serves_a_restarted_run(tmp_path):
  """config.compilation_cache_dir: a second run of the same config (a restart, the next stage)
  loads its compiled programs from the cache instead of compiling them again."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache

  hits = []
  listener = lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None
  old_dir = jax.config.jax_compilation_cache_dir
  old_min = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.monitoring.register_event_listener(listener)
  try:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    cache = tmp_path / "xla_cache"
    c = config(total_steps=2, compilation_cache_dir=str(cache))
    train(c, tmp_path / "first")
    assert any(cache.iterdir()), "nothing was written to the compilation cache"
    assert not hits
    train(c, tmp_path / "second")
    assert hits, "the second run compiled everything again"
  finally:
    jax.monitoring.unregister_event_listener(listener)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old_min)
    jax.config.update("jax_compilation_cache_dir", old_dir)
    compilation_cache.reset_cache()


def test_each_loss_is_read_after_the_next_step_is_dispatched(tmp_path, monkeypatch):
  """The host reads step k's loss only once step k+1 is queued (the device never waits on the
  host), except before a checkpoint: a state is saved only after its loss was checked."""
  from wegen_jax.training import trainer

  events = []
  build = trainer.make_train_step

  def recording(*args, **kwargs):
    ts = build(*args, **kwargs)

    class Recorded:
      def __init__(self):
        self.calls = 0

      def trace(self, *a):
        return ts.step_fn.trace(*a)

      def __call__(self, *a):
        self.calls += 1
        k = self.calls
        events.append(("dispatch", k))
        params, opt_state, metrics = ts.step_fn(*a)
        loss = metrics["loss"]

        class Loss:
          def __float__(self):
            events.append(("read", k))
            return float(loss)

        return params, opt_state, dict(metrics, loss=Loss())

    return dataclasses.replace(ts, step_fn=Recorded())

  monkeypatch.setattr(trainer, "make_train_step", recording)
  result = train(config(total_steps=6, ckpt_every=3), tmp_path)
  first_read = {k: events.index(("read", k)) for k in range(1, 7)}
  dispatched = {k: events.index(("dispatch", k)) for k in range(1, 7)}
  for k in (1, 2, 4, 5):
    assert first_read[k] > dispatched[k + 1], events
  for k in (3,):  # checkpoint at step 3: checked before step 4 is dispatched
    assert first_read[k] < dispatched[k + 1], events
  assert saved_steps(tmp_path) == [3, 6] and sorted(result.losses) == list(range(1, 7))


class _HalfEmbeddingTask:
  """The LM task training only embedding rows >= 128 and keeping those rows at unit norm."""

  @staticmethod
  def make(base):
    import jax.numpy as jnp

    class Task(base):
      def trainable_rows(self, path):
        if path == "embed.embedding":
          return (np.arange(self.config.model.vocab_size) >= 128)[:, None]
        return None

      def after_update(self, params, step):
        table = params["embed"]["embedding"]
        rows = table[...][128:]
        table[...] = table[...].at[128:].set(rows / jnp.linalg.norm(rows, axis=-1, keepdims=True))
        return params

    return Task


def test_row_masks_and_the_post_update_hook(tmp_path, monkeypatch):
  from flax import nnx

  import wegen_jax.systems.lm as lm_system
  from wegen_jax.training.checkpointing import load_run_parameters
  from wegen_jax.training.task import get_task

  monkeypatch.setattr(lm_system, "Task", _HalfEmbeddingTask.make(lm_system.Task))
  c = config(total_steps=4, ckpt_every=4)
  train(c, tmp_path)
  task = get_task(c)
  initial = task.build_model(nnx.Rngs(c.seed)).embed.embedding[...]
  trained = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(c.seed)))
  load_run_parameters(trained, tmp_path)
  table = np.asarray(trained.embed.embedding[...])
  # masked rows: no update, no decay (eager vs jitted init differ by an ulp; an Adam step is ~1e-4)
  np.testing.assert_allclose(table[:128], np.asarray(initial[:128]), rtol=0, atol=1e-7)
  assert np.abs(table[128:] - np.asarray(initial[128:])).max() > 1e-3
  np.testing.assert_allclose(np.linalg.norm(table[128:], axis=-1), 1.0, rtol=1e-5)


def test_periodic_evaluators_write_metrics_and_eval_files(tmp_path):
  c = config(total_steps=8, ckpt_every=8)
  c.evals = {"text": {"type": "perplexity", "every": 4, "num_rows": 8, "batch_size": 4}}
  train(c, tmp_path)
  assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["4.json", "8.json"]
  first, last = (json.loads((tmp_path / "eval" / f"{s}.json").read_text())["text"] for s in (4, 8))
  assert first["tokens"] == 8 * 31 and last["ce"] < first["ce"]
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "eval/text/ce" in r] == [4, 8]


def test_an_unknown_evaluator_fails_before_compiling(tmp_path):
  c = config()
  c.evals = {"oops": {"type": "no_such_metric"}}
  with pytest.raises(ValueError, match="no module wegen_jax.evaluators.no_such_metric"):
    train(c, tmp_path)
