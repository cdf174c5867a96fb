"""Launchers (launch/) and the launch-time environment check (wegen_jax.tools.envcheck)."""

import os
import socket
import string
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["launch/tpu_pod.sh", "launch/xpk.sh", "launch/slurm_gpu.sh"]
ARGS = ["--", "--config", "configs/wegen.py:size=7b,stage=2", "--config.data.dir=/mnt/my data"]


def envcheck(*args, **env):
  clean = {k: v for k, v in os.environ.items() if not k.startswith(("WEGEN_", "SLURM_", "TPU_", "MEGASCALE_"))}
  return subprocess.run(
    [sys.executable, "-m", "wegen_jax.tools.envcheck", *args],
    cwd=REPO,
    env=dict(clean, JAX_PLATFORMS="cpu", **env),
    capture_output=True,
    text=True,
    timeout=120,
  )


def launcher(script, *args):
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  return subprocess.run(["bash", script, *args], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_envcheck_passes_on_a_cpu_host():
  out = envcheck("--platform", "cpu")
  assert out.returncode == 0 and "envcheck ok" in out.stdout and "single process" in out.stdout, out.stderr


@pytest.mark.parametrize(
  "platform, message",
  [("gpu", "this JAX build has no GPU support (no jax CUDA plugin): pip install 'jax[cuda12]==0.10.2'"), ("tpu", None)],
)
def test_envcheck_names_the_fix_for_the_wrong_platform(platform, message):
  out = envcheck("--platform", platform)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  if message:
    assert f"error: {message}" in out.stderr
  else:  # with libtpu installed this host still has no chips; without it, the build is wrong
    assert (
      "error: no TPU chips on this host" in out.stderr
      or "error: this JAX build has no TPU runtime (libtpu is not installed)" in out.stderr
    ), out.stderr


def test_envcheck_unreachable_coordinator():
  out = envcheck(
    "--platform",
    "cpu",
    "--wait_coordinator",
    "1",
    WEGEN_COORDINATOR=f"localhost:{free_port()}",
    WEGEN_NUM_PROCESSES="2",
    WEGEN_PROCESS_ID="1",
  )
  assert out.returncode == 2 and "error: could not reach the coordinator localhost:" in out.stderr, out.stderr


def test_envcheck_unresolvable_or_incomplete_coordinator():
  out = envcheck("--platform", "cpu", "--coordinator", "no-such-host.invalid:1234")
  assert out.returncode == 2 and "error: cannot resolve the coordinator host 'no-such-host.invalid'" in out.stderr
  out = envcheck("--platform", "cpu", WEGEN_COORDINATOR="localhost:1234")
  assert out.returncode == 2 and "WEGEN_NUM_PROCESSES is not" in out.stderr


def test_envcheck_derives_the_slurm_coordinator():
  slurm = dict(
    SLURM_NTASKS="16", SLURM_JOB_ID="4097", SLURM_STEP_NODELIST="localhost", SLURM_PROCID="3", SLURM_LOCALID="3"
  )
  out = envcheck("--platform", "cpu", **slurm)
  assert out.returncode == 0 and "coordinator localhost:61441 (slurm)" in out.stdout, out.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
  assert subprocess.run(["bash", "-n", script], cwd=REPO).returncode == 0


def test_tpu_pod_dry_run_prints_every_step():
  out = launcher(
    "launch/tpu_pod.sh",
    "--dry-run",
    "--name",
    "wegen-t",
    "--zone",
    "us-east5-a",
    "--type",
    "v5p-64",
    "--workdir",
    "/mnt/shared/run",
    *ARGS,
  )
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0].startswith("+ gcloud compute tpus queued-resources create wegen-t --node-id wegen-t")
  assert "--accelerator-type v5p-64 --runtime-version v2-alpha-tpuv5" in lines[0]
  ssh = [l for l in lines if "tpu-vm ssh wegen-t" in l]
  assert len(ssh) == 3 and all("--worker=all" in l for l in ssh)
  assert "wegen_jax.tools.envcheck --platform tpu" in ssh[1]
  assert (
    "wegen_jax.train --workdir /mnt/shared/run --config configs/wegen.py:size=7b,stage=2 "
    "'\\''--config.data.dir=/mnt/my data'\\''"
  ) in ssh[2]
  assert any("tpu-vm scp 'wegen-t:wegen_jax/logs/*' logs/wegen-t/" in l for l in lines)


def test_tpu_pod_fails_fast_on_bad_options():
  out = launcher("launch/tpu_pod.sh", "--dry-run", "--name", "x", "--zone", "z", "--type", "v5p-64", *ARGS)
  assert out.returncode == 2 and "missing --workdir" in out.stderr
  out = launcher(
    "launch/tpu_pod.sh",
    "--dry-run",
    "--name",
    "x",
    "--zone",
    "z",
    "--type",
    "v5p-64",
    "--workdir",
    "gs://bucket/run",
    *ARGS,
  )
  assert out.returncode == 2 and "give an absolute path on a mount that every worker shares" in out.stderr
  out = launcher("launch/tpu_pod.sh", "--dry-run", "--name", "x", "--zone", "z", "--type", "v5p-64", "--workdir", "/w")
  assert out.returncode == 2 and "no training arguments" in out.stderr


def test_xpk_dry_run():
  out = launcher(
    "launch/xpk.sh",
    "--dry-run",
    "--cluster",
    "c1",
    "--name",
    "w1",
    "--type",
    "v6e-64",
    "--workdir",
    "/mnt/shared/r",
    *ARGS,
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.startswith("+ xpk workload create --cluster c1 --workload w1 --tpu-type v6e-64 --num-slices 1")
  assert "envcheck --platform tpu; python -m wegen_jax.train --workdir /mnt/shared/r" in out.stdout


def test_slurm_dry_run_and_outside_an_allocation():
  out = launcher("launch/slurm_gpu.sh", "--dry-run", "--nodes", "2", "--workdir", "/shared/run", *ARGS)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  srun = "+ srun --nodes=2 --ntasks=16 --ntasks-per-node=8 --kill-on-bad-exit=1 "
  assert lines[0].startswith(srun) and lines[0].endswith("-m wegen_jax.tools.envcheck --platform gpu")
  assert lines[1].startswith(srun) and "-m wegen_jax.train --workdir /shared/run" in lines[1]
  out = launcher("launch/slurm_gpu.sh", "--nodes", "2", "--workdir", "/shared/run", *ARGS)
  assert out.returncode == 2 and "not inside a SLURM allocation" in out.stderr


def test_gke_jobset_template_renders_to_a_jobset():
  yaml = pytest.importorskip("yaml")
  text = string.Template((REPO / "launch/gke_jobset.yaml").read_text()).safe_substitute(
    NAME="w",
    IMAGE="img",
    ACCELERATOR="tpu-v5p-slice",
    TOPOLOGY="2x4x4",
    WORKERS="8",
    CHIPS_PER_VM="4",
    PVC="shared",
    WORKDIR="/mnt/shared/r",
    ARGS="--config configs/lm_train.py",
  )
  assert "${" not in "".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
  doc = yaml.safe_load(text)
  pod = doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
  assert doc["kind"] == "JobSet" and pod["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "2x4x4"
  assert "envcheck --platform tpu" in pod["containers"][0]["args"][0]
