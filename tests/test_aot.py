"""wegen_jax.tools.aot: the trainer's own step compiled for a TPU slice on this CPU host."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from wegen_jax.configs import lm_train as lm_config

REPO = Path(__file__).resolve().parents[1]
TINY = ["--config", "configs/lm_train.py", "--config.model.num_layers=1", "--config.data.seq_len=32"]


def aot(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "wegen_jax.tools.aot", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )


def test_optimizer_state_is_sharded_like_the_parameters():
  """jit(tx.init) alone would leave the moments on one device (its outputs depend on no
  sharded input); the trainer's step places them like their parameters."""
  from wegen_jax.tools.fit import abstract_inputs

  c = lm_config.get_config()
  c.model.num_layers = 1
  _, mesh, _, (params, _, opt_state, batch, _, _) = abstract_inputs(c, jax.devices())
  keystr = jax.tree_util.keystr
  param_specs = {keystr(p): x.sharding.spec for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  moments = {keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(opt_state)[0] if x.ndim}
  assert len(moments) == 2 * len(param_specs)  # Adam's mu and nu
  for path, x in moments.items():
    owner = next(k for k in param_specs if path.endswith(k))
    assert x.sharding.mesh.size == 8 and x.sharding.spec == param_specs[owner], path
  assert "fsdp" in str(batch["tokens"].sharding.spec)


def test_wegen_stage1_inputs_follow_the_pipeline_and_freeze_groups():
  """WeGen stage 1: frozen LLM/vision/VAE, the UNet's moments behind optax.multi_transform
  (freeze_until) still get the UNet's shardings; the batch has the pipeline's fields."""
  from wegen_jax.configs import wegen as wegen_config
  from wegen_jax.tools.fit import abstract_inputs

  c = wegen_config.get_config("size=tiny,stage=1")
  _, _, _, (params, frozen, opt_state, batch, _, _) = abstract_inputs(c, jax.devices())
  trained = {"unet", "vision"} if c.model.detokenizer_trains_vision else {"unet"}  # tiny: its tower too
  assert {str(p[0].key) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]} == trained
  moments = [x for x in jax.tree.leaves(opt_state) if x.ndim > 1]
  assert moments and all(x.sharding.mesh.size == 8 for x in moments)
  assert any("fsdp" in str(x.sharding.spec) for x in moments)
  d = c.data
  assert batch["vae_pixels"].shape == (c.batch_size, d.max_images, 3, d.vae_image_size, d.vae_image_size)
  assert batch["input_ids"].shape == (c.batch_size, d.max_len) and "example_valid" in batch


@pytest.fixture(scope="module")
def libtpu():
  pytest.importorskip("libtpu", reason="ahead-of-time TPU compilation needs libtpu (pip install -e '.[tpu]')")


def test_tiny_lm_fits_a_v5p_8(libtpu, tmp_path):
  out = aot(
    *TINY,
    "--topology",
    "v5p-8",
    "--json",
    str(tmp_path / "r.json"),
    "--buffers",
    "3",
    "--dump_dir",
    str(tmp_path / "dump"),
  )
  assert out.returncode == 0, out.stderr[-3000:]
  for field in (
    "4 chips (TPU v5)",
    "memory/chip",
    "arguments",
    "temporaries",
    "total",
    "FLOPs/step",
    "6*N*tokens",
    "step time",
    "40% MFU",
    "fits",
  ):
    assert field in out.stdout, (field, out.stdout)
  r = json.loads((tmp_path / "r.json").read_text())
  assert r["fits"] and r["mesh"]["fsdp"] == 4 and r["flops_per_chip"] > 0
  # the program's count is within a factor of 2 of 6*N*tokens (attention and the loss come on top)
  assert 0.8 < r["flops_per_chip"] * r["chips"] / r["analytic_flops"] < 2
  # --buffers: the largest slots of XLA's buffer assignment, within the compiled temporaries
  buffers = r["buffers"]["largest"]
  assert len(buffers) == 3 and "3 largest of the" in out.stdout
  assert buffers[0][0] >= buffers[2][0] > 0 and "[" in buffers[0][1]
  assert (
    buffers[0][0]
    <= r["buffers"]["heap_bytes"]
    <= r["memory"]["temporaries"] + r["memory"]["arguments"] + r["memory"]["outputs"]
  )


def test_flops_count_loops_by_their_trip_counts(libtpu, tmp_path):
  """Scanned layers and gradient accumulation are loops: XLA's cost analysis would count each
  body once; the step's FLOPs must not change with either."""
  reports = []
  for extra in ([], ["--config.model.scan_layers=True", "--config.grad_accum=2"]):
    out = aot(*TINY, "--config.model.num_layers=3", *extra, "--topology", "v5p-8", "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    reports.append(json.loads((tmp_path / "r.json").read_text()))
  unrolled, scanned = (r["flops_per_chip"] for r in reports)
  assert abs(scanned - unrolled) <= 1e-6 * unrolled, (scanned, unrolled)


def test_config_that_does_not_fit_exits_nonzero_with_levers(libtpu):
  out = aot(*TINY, "--topology", "v5p-8", "--hbm_gib=0.001")
  assert out.returncode == 1, out.stdout + out.stderr[-3000:]
  assert "error: does not fit: needs" in out.stderr and "over the 1.0 MiB of HBM" in out.stderr
  for lever in ("remat", "grad_accum", "batch_size", "fsdp"):
    assert lever in out.stderr


def test_bad_topology_is_a_clear_error(libtpu):
  out = aot(*TINY, "--topology", "v5p-7")
  assert out.returncode == 2 and "unknown TPU slice 'v5p-7'" in out.stderr and "v5p-64" in out.stderr
  assert "Traceback" not in out.stderr


def test_unet_convolutions_stay_batch_parallel(libtpu, tmp_path):
  """FSDP shards conv kernels on their output channels; without activation constraints XLA
  split some UNet convolutions that way and gathered the whole batch of images onto every chip
  (f32[24, 16, 16, 16] here, [512, 128, 128, 640] at 7B). No 4-D buffer may hold the global batch."""
  import re

  out = aot(
    "--config",
    "configs/wegen.py:size=tiny,stage=1",
    "--topology",
    "v5p-8",
    "--buffers",
    "100000",
    "--dump_dir",
    str(tmp_path / "dump"),
    "--json",
    str(tmp_path / "r.json"),
  )
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads((tmp_path / "r.json").read_text())
  images = 8 * 3  # global batch 8 rows x max_images 3; 6 per chip on 4 chips
  shapes = " ".join(s for _, s in r["buffers"]["largest"])
  assert re.search(r"\[6,\d+,\d+,\d+\]", shapes)  # per-chip NHWC activations are there
  gathered = re.findall(rf"\[{images},\d+,\d+,\d+\]", shapes)
  assert not gathered, gathered
