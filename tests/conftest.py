"""Test session set-up: 8 virtual CPU devices for sharding tests (must precede jax's backend
initialisation), float32 matmuls at full precision, and shared fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def torch_seed():
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  return torch


@pytest.fixture(scope="session")
def curated_dir(tmp_path_factory):
  """Three generator clips curated and labelled with the synthetic ground truth (a TFDS data dir)."""
  from wegen_jax.data import synthetic as S
  from wegen_jax.curation import __main__ as curate_cli

  root = tmp_path_factory.mktemp("wegen_data")
  (root / "videos").mkdir()
  for i in range(3):
    frames, gt = S.generate_clip(10 + i, S.ClipSpec(num_frames=36))
    S.write_clip(str(root / "videos" / f"clip_{i}"), frames, gt, "h264")
  assert (
    curate_cli.main(
      [
        "--videos",
        str(root / "videos"),
        "--out",
        str(root / "data"),
        "--config",
        "configs/curate.py:preset=synthetic",
        "--label",
        "--no-progress",
      ]
    )
    == 0
  )
  return root / "data"
