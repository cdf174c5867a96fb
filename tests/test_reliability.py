"""Fault injection on the trainer (docs/RELIABILITY.md): non-finite states are never kept, a
changed config is refused, corruption (also silent) falls back, one trainer per workdir, bad
config input fails early in one line, and metrics.jsonl stays exact and strict JSON."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lm_runs import config, logged_losses, saved_steps
from wegen_jax.training import trainer
from wegen_jax.training.checkpointing import DIGEST_FILE, CheckpointMismatchError, latest_parameters
from wegen_jax.training.trainer import NonFiniteLossError, train
from wegen_jax.training.validation import ConfigError
from wegen_jax.training.workdir_lock import WorkdirBusyError, WorkdirLock

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


@pytest.fixture(scope="module")
def run8(tmp_path_factory):
  """A run stopped at step 8 (checkpoints 4 and 8), copied by the tests that damage it."""
  workdir = tmp_path_factory.mktemp("run8")
  train(config(), workdir, stop_at=8)
  return workdir


def copy_run(src: Path, dst: Path) -> Path:
  subprocess.run(["cp", "-a", f"{src}/.", str(dst)], check=True)
  return dst


def test_a_non_finite_stop_keeps_a_checkpoint_that_a_lower_learning_rate_trains_from(tmp_path):
  # Checkpoints every step: each is written right after an update that may have blown it up.
  wild = {"optimizer.lr": 1e6, "optimizer.grad_clip": 0.0, "optimizer.warmup_steps": 0, "ckpt_every": 1}
  with pytest.raises(NonFiniteLossError, match="last good checkpoint is step"):
    train(config(total_steps=40, **wild), tmp_path)
  step, saved = latest_parameters(tmp_path / "checkpoints")
  assert all(np.isfinite(v).all() for v in saved.values())
  calm = {"optimizer.lr": 1e-3, "optimizer.warmup_steps": 0}
  result = train(config(total_steps=step + 4, **calm), tmp_path)
  assert min(result.losses) == step + 1 and all(math.isfinite(v) for v in result.losses.values())
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == list(range(1, step + 5))  # the replayed tail was dropped


def test_a_changed_model_is_refused_naming_the_fields_and_nothing_is_moved(run8, tmp_path):
  run = copy_run(run8, tmp_path)
  before = sorted(p.name for p in (run / "checkpoints").iterdir())
  with pytest.raises(CheckpointMismatchError) as e:
    train(config(**{"model.hidden_size": 128}), run)
  message = str(e.value)
  assert "model.hidden_size: 64 stored vs 128 now" in message and "new --workdir" in message, message
  assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_an_unreadable_step_is_set_aside_even_when_an_earlier_copy_was(run8, tmp_path):
  run = copy_run(run8, tmp_path)
  (run / "checkpoints" / "8.unreadable" / "state").mkdir(parents=True)  # from an earlier fallback
  for f in (run / "checkpoints" / "8" / "state").rglob("*"):
    if f.is_file() and f.name != DIGEST_FILE:
      f.write_bytes(b"corrupt")
  result = train(config(), run)
  assert min(result.losses) == 5  # resumed from step 4
  assert (run / "checkpoints" / "8.unreadable.2").is_dir() and (run / "checkpoints" / "8.unreadable").is_dir()


def test_a_flipped_byte_is_caught_by_the_digest_and_falls_back(run8, tmp_path, caplog):
  run = copy_run(run8, tmp_path)
  state = run / "checkpoints" / "8" / "state"
  biggest = max((f for f in state.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
  data = bytearray(biggest.read_bytes())
  data[len(data) // 2] ^= 0xFF  # raw array bytes: orbax itself restores this without complaint
  biggest.write_bytes(bytes(data))
  result = train(config(), run)
  assert min(result.losses) == 5
  assert any("does not match its sha256" in r.message for r in caplog.records)


def test_every_saved_step_has_a_digest_also_with_async_saves(tmp_path):
  train(config(total_steps=6, ckpt_every=2, async_checkpoints=True), tmp_path)
  for step in saved_steps(tmp_path):
    digest = json.loads((tmp_path / "checkpoints" / str(step) / DIGEST_FILE).read_text())["sha256"]
    assert any(name.startswith("state/") for name in digest)


def test_a_second_trainer_on_a_workdir_exits_at_once_naming_the_holder(tmp_path):
  with WorkdirLock(tmp_path):
    with pytest.raises(WorkdirBusyError, match=f'"pid": {os.getpid()}'):
      train(config(), tmp_path)
  holder = subprocess.Popen(  # another process holds the workdir; the CLI refuses in one line
    [
      sys.executable,
      "-c",
      f"from wegen_jax.training.workdir_lock import WorkdirLock as L; l = L({str(tmp_path)!r}).acquire(); print('held', flush=True); import time; time.sleep(120)",
    ],
    stdout=subprocess.PIPE,
    text=True,
    env=ENV,
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    out = subprocess.run(
      [sys.executable, "-m", "wegen_jax.train", "--config", "configs/lm_train.py", "--workdir", str(tmp_path)],
      cwd=REPO,
      env=ENV,
      capture_output=True,
      text=True,
      timeout=120,
    )
  finally:
    holder.kill()
    holder.wait()
  assert out.returncode == 2 and f'"pid": {holder.pid}' in out.stderr and "Traceback" not in out.stderr, out.stderr
  assert not (tmp_path / "checkpoints").exists()
  train(config(total_steps=1), tmp_path)  # the killed holder left no stale lock


@pytest.mark.parametrize(
  "overrides, match",
  [
    ({"ckpt_every": 0}, "ckpt_every=0"),
    ({"log_every": 0}, "log_every=0"),
    ({"total_steps": -3}, "total_steps=-3"),
    ({"grad_accum": 3}, "grad_accum=3"),
  ],
  ids=lambda x: x if isinstance(x, str) else None,
)
def test_bad_config_values_fail_before_anything_is_built(overrides, match, tmp_path, monkeypatch):
  monkeypatch.setattr(trainer, "create_sharded", lambda *a, **k: pytest.fail("the model was built"))
  with pytest.raises(ConfigError, match=match):
    train(config(**overrides), tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_bad_paths_fail_before_anything_is_built(tmp_path, monkeypatch):
  monkeypatch.setattr(trainer, "create_sharded", lambda *a, **k: pytest.fail("the model was built"))
  a_file = tmp_path / "file"
  a_file.write_text("")
  with pytest.raises(ConfigError, match="is a file"):
    train(config(), a_file)
  with pytest.raises(ConfigError, match="not writable"):
    train(config(), "/sys/wegen_run")  # a read-only mount, even for root
  c = config()
  c.init_from = str(tmp_path / "no_such_run")
  with pytest.raises(ConfigError, match="no checkpoint there"):
    train(c, tmp_path / "run")
  assert not (tmp_path / "no_such_run").exists()


def test_wegen_data_dir_errors_say_how_to_build_the_data(tmp_path, monkeypatch):
  from wegen_jax.configs import wegen as wegen_config

  monkeypatch.setattr(trainer, "create_sharded", lambda *a, **k: pytest.fail("the model was built"))
  c = wegen_config.get_config("size=tiny,stage=1")
  for data_dir, match in (
    ("", "data.dir is not set"),
    (str(tmp_path / "none"), "does not exist"),
    (str(tmp_path), "holds no"),
  ):
    c.data.dir = data_dir
    with pytest.raises(ConfigError, match=match) as e:
      train(c, tmp_path / "run")
    assert "python -m wegen_jax.curation" in str(e.value)


def test_cli_config_errors_are_one_line(tmp_path):
  def run(*flags):
    cmd = [sys.executable, "-m", "wegen_jax.train", "--config", "configs/lm_train.py", "--workdir", str(tmp_path / "w")]
    return subprocess.run(cmd + list(flags), cwd="/", env=ENV, capture_output=True, text=True, timeout=120)

  unknown = run("--config.ckpt_evry=3", "--config.model.num_layers=1")
  assert unknown.returncode == 2 and "Traceback" not in unknown.stderr, unknown.stderr
  assert "'ckpt_evry' is not a field of the config; did you mean ckpt_every?" in unknown.stderr
  zero = run("--config.log_every=0")
  assert zero.returncode == 2 and zero.stderr.strip().splitlines()[-1].startswith("error: config.log_every=0")


def test_metrics_rows_are_written_once_per_step_across_a_resume_and_are_strict_json(tmp_path):
  train(config(), tmp_path, stop_at=6)  # checkpoint 4, and 6 (the stop)
  # As if killed after logging steps 7-9 but before their checkpoint: those rows are replayed.
  for step in (7, 8, 9):
    with open(tmp_path / "metrics.jsonl", "a") as f:
      f.write(json.dumps({"step": step, "loss": float("nan")}) + "\n")
  (tmp_path / "metrics.jsonl").open("a").write('{"step": 10, "lo')  # a torn last line
  train(config(), tmp_path)
  text = (tmp_path / "metrics.jsonl").read_text()
  rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON token {c}")) for line in text.splitlines()]
  assert [r["step"] for r in rows] == list(range(1, 13))
  assert all(r["mfu"] <= 1 for r in rows if r.get("mfu") is not None)


def test_metrics_without_checkpoints_start_a_fresh_file_with_a_warning(tmp_path, capsys):
  train(config(total_steps=2, ckpt_every=2), tmp_path)
  subprocess.run(["rm", "-rf", str(tmp_path / "checkpoints")], check=True)
  train(config(total_steps=2, ckpt_every=2), tmp_path)
  assert "no checkpoint to resume from" in capsys.readouterr().err
  assert sorted(logged_losses(tmp_path)) == [1, 2] and len(list(tmp_path.glob("metrics.jsonl.*.old"))) == 1


def test_mfu_stays_below_one_on_eight_virtual_devices(tmp_path):
  train(config(total_steps=6, ckpt_every=2), tmp_path)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert all(0 < r["mfu"] <= 1 for r in rows if "mfu" in r), rows
  assert any("checkpoint_s" in r for r in rows)
