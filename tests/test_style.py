"""The tree keeps one style: ruff's formatter and linter (ruff.toml) report nothing."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff():
  exe = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
  if not Path(exe).exists():
    pytest.skip("ruff is not installed (pip install -e '.[dev]')")
  return exe


@pytest.mark.parametrize("args", [["format", "--check"], ["check"]], ids=["format", "lint"])
def test_ruff_is_clean(args):
  result = subprocess.run([_ruff(), *args, "."], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, f"`ruff {' '.join(args)} .` found:\n{result.stdout}{result.stderr}"
