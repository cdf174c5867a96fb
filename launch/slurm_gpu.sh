#!/usr/bin/env bash
# Multi-node GPU training under SLURM, one process per GPU (as jax's SLURM detection expects:
# each task drives the GPU numbered by its SLURM_LOCALID, so every task must see all of its
# node's GPUs: no --gpus-per-task / --gpu-bind).
#
#   sbatch --nodes=4 launch/slurm_gpu.sh --workdir /shared/wegen7b -- \
#       --config configs/wegen.py:size=7b,stage=2 --config.data.dir=/shared/data
#   bash launch/slurm_gpu.sh --dry-run --nodes 4 --workdir /shared/run -- --config configs/lm_train.py
#
# Runs from the repository root on a shared filesystem, with .venv installed on the GPU nodes
# (pip install -e '.[gpu]' there, i.e. jax[cuda12]). The job first runs
# wegen_jax.tools.envcheck in every task (wrong JAX build, missing GPUs, bad coordinator:
# one clear line and the job stops), then the same training command in every task.
#SBATCH --job-name=wegen_jax
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --exclusive
#SBATCH --output=logs/%x_%j.out
set -euo pipefail
# under sbatch the script runs from a spool copy: find the repository from the submit directory
ROOT=${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
source "$ROOT/launch/common.sh"

GPUS_PER_NODE=${SLURM_NTASKS_PER_NODE:-8} NODES=${SLURM_JOB_NUM_NODES:-} WORKDIR= PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workdir) WORKDIR=$2; shift 2 ;;
    --nodes) NODES=$2; shift 2 ;;
    --gpus-per-node) GPUS_PER_NODE=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (training arguments go after --)" ;;
  esac
done
TRAIN_ARGS=("$@")
need WORKDIR "--workdir (a directory on the shared filesystem)"
need NODES "--nodes (or submit with sbatch --nodes=N)"
[[ ${#TRAIN_ARGS[@]} -gt 0 ]] || die "no training arguments: add -- --config configs/...py[:args]"
if [[ "$DRY_RUN" != 1 ]]; then
  [[ -n "${SLURM_JOB_ID:-}" ]] || die "not inside a SLURM allocation: submit with sbatch (or use --dry-run)"
  [[ -x "$PYTHON" ]] || die "$PYTHON not found: install the repository's .venv on the shared filesystem"
fi
need_tool srun "run under SLURM"
cd "$ROOT"
NTASKS=$((NODES * GPUS_PER_NODE))
SRUN=(srun --nodes="$NODES" --ntasks="$NTASKS" --ntasks-per-node="$GPUS_PER_NODE" --kill-on-bad-exit=1)
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}

# 1. Every task: a CUDA build of JAX, visible GPUs, a resolvable coordinator (jax derives it
#    from SLURM_STEP_NODELIST and the job id, wegen_jax.parallel.distributed uses it).
run "${SRUN[@]}" "$PYTHON" -m wegen_jax.tools.envcheck --platform gpu
# 2. Training, one process per GPU.
run "${SRUN[@]}" "$PYTHON" -m wegen_jax.train --workdir "$WORKDIR" "${TRAIN_ARGS[@]}"
