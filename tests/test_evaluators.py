"""Evaluators from config.evals and `python -m wegen_jax.eval` on a training run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lm_runs import config
from test_dynamics_metrics import boxes_of, pair_with_motion
from wegen_jax.evaluators import dynamics, reconstruction
from wegen_jax.training.trainer import train

REPO = Path(__file__).resolve().parents[1]


def _pairs():
  frames, gt = pair_with_motion()
  boxes, frame_of, labels = boxes_of(gt, (0, 20))
  pair = dict(text="it moves", source=frames[0], target=frames[20], boxes=boxes, box_frame=frame_of, box_label=labels)
  return [pair, pair]


def test_dynamics_evaluator_scores_what_the_system_generates():
  pairs = _pairs()
  asked = []

  def fns(draw):
    def generate_images(prompts, rng_seed=0):
      asked.extend(prompts)
      return [draw(pairs[0]) for _ in prompts]

    return {"validation_pairs": lambda n: pairs[:n], "generate_images": generate_images}

  ev = dynamics.Evaluator(num_samples=2)
  perfect = ev.run(fns(lambda p: p["target"]), step=0)
  assert perfect["unchanged_mae"] == 0 and perfect["object_found"] == 1.0 and perfect["samples"] == 2
  assert asked[0]["text"] == "it moves" and asked[0]["images"][0] is pairs[0]["source"]
  copied = ev.run(fns(lambda p: p["source"]), step=0)
  assert copied["position_error"] == copied["baseline_position_error"] > perfect["position_error"]
  small = ev.run(fns(lambda p: p["target"][::2, ::2]), step=0)  # resized to the target's size
  assert 0 < small["frame_mae"] < 20
  with pytest.raises(ValueError, match="validation_pairs"):
    ev.run({"generate_images": None}, step=0)


def test_reconstruction_evaluator_measures_the_redrawing():
  frames = [p["target"] for p in _pairs()]
  fns = lambda redraw: {"validation_images": lambda n: frames[:n], "reconstruct_images": lambda ims, seed: redraw(ims)}
  ev = reconstruction.Evaluator(num_images=2)
  assert ev.run(fns(lambda ims: ims), 0) == {"frame_mae": 0.0, "images": 2.0}
  black = ev.run(fns(lambda ims: [np.zeros_like(i) for i in ims]), 0)["frame_mae"]
  assert black == pytest.approx(np.mean([f.astype(float).mean() for f in frames]))


def _eval(*args):
  env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}", JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "wegen_jax.eval", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )


CONFIG = """
import lm_runs

def get_config(arg=None):
  c = lm_runs.config(total_steps=4, ckpt_every=4)
  c.evals = {"text": {"type": "perplexity", "num_rows": 8, "batch_size": 4}}
  return c
"""


def test_eval_cli_matches_the_trainer_and_resumes(tmp_path):
  (tmp_path / "eval_cfg.py").write_text(CONFIG)
  c = config(total_steps=4, ckpt_every=4)
  c.evals = {"text": {"type": "perplexity", "num_rows": 8, "batch_size": 4}}
  run = tmp_path / "run"
  train(c, run)  # the trainer's own end-of-run eval
  in_training = json.loads((run / "eval" / "4.json").read_text())["text"]
  (run / "eval" / "4.json").unlink()

  out = _eval("--config", str(tmp_path / "eval_cfg.py"), "--workdir", str(run))
  assert out.returncode == 0, out.stderr[-2000:]
  alone = json.loads((run / "eval" / "4.json").read_text())["text"]
  assert alone["tokens"] == in_training["tokens"] == 8 * 31
  assert alone["ce"] == pytest.approx(in_training["ce"], rel=1e-5)

  again = _eval("--config", str(tmp_path / "eval_cfg.py"), "--workdir", str(run))
  assert again.returncode == 0 and "text: already in" in again.stdout  # nothing computed twice
  wrong = _eval("--config", str(tmp_path / "eval_cfg.py"), "--workdir", str(tmp_path / "nothing"))
  assert wrong.returncode != 0 and "has no checkpoints/" in wrong.stderr


def test_dynamics_evaluator_keeps_its_frames_and_reuses_them_after_a_kill(tmp_path):
  pairs = _pairs()
  calls = []

  def generate_images(prompts, rng_seed=0):
    calls.append(rng_seed)
    return [pairs[rng_seed]["target"] // 2 for _ in prompts]  # prompt i is asked with seed i

  fns = {"validation_pairs": lambda n: pairs[:n], "generate_images": generate_images}
  ev, out = dynamics.Evaluator(num_samples=2, batch_size=1), tmp_path / "eval" / "7" / "dynamics"
  first = ev.run(fns, 7, out_dir=out)
  assert calls == [0, 1] and sorted(p.name for p in out.iterdir()) == ["000.png", "001.png"]
  (out / "001.png").unlink()  # killed while writing the second frame (writes are atomic: no torn 001.png)
  (out / "001.png.tmp").write_bytes(b"torn")
  again = ev.run(fns, 7, out_dir=out)
  assert calls == [0, 1, 1] and again == first  # only the missing frame is generated again


def test_validation_loss_evaluator_follows_training(tmp_path):
  c = config(total_steps=8, ckpt_every=8)
  c.evals = {"val": {"type": "validation_loss", "every": 2, "num_batches": 2}}
  train(c, tmp_path)
  rows = {s: json.loads((tmp_path / "eval" / f"{s}.json").read_text())["val"] for s in (2, 8)}
  assert rows[8]["batches"] == 2 and rows[8]["loss"] == rows[8]["loss_ce"]
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_loss = {r["step"]: r["loss"] for r in logged if "loss" in r}
  assert rows[8]["loss"] < rows[2]["loss"] - 0.1  # measured 5.55 -> 5.40 on held-out rows
  assert rows[8]["loss"] == pytest.approx(train_loss[8], rel=0.05)  # same distribution, unseen rows
