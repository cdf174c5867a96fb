#!/usr/bin/env bash
# One-GPU performance checks, under 8 minutes on one H100/H200 (each step has its own timeout):
#   bash bench/gpu_suite.sh                        # on the GPU host, from the repository root
#   GPU_SUITE_DRY_RUN=1 bash bench/gpu_suite.sh    # CPU dry run: the same steps at tiny sizes
# Steps: (1) the Pallas kernels' hardware tests, (2) flash attention fwd and fwd+bwd vs XLA and
# cuDNN at 1k-16k tokens, (3) LLM train-step MFU (Qwen2.5-3B text model, bf16, remat, flash),
# (4) WeGen stage-2 train-step MFU (the tiny system with a ~1B LLM: WeGen-7B's 6.8B trainable
# weights need ~108 GB of optimizer state, more than one device). Logs go to $GPU_SUITE_OUT
# (default /tmp/gpu_suite); the exit status is non-zero when any step failed; a summary ends it.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${GPU_SUITE_OUT:-/tmp/gpu_suite}
mkdir -p "$OUT"
if [[ "${GPU_SUITE_DRY_RUN:-0}" != "0" ]]; then
  export JAX_PLATFORMS=cpu
  ATTN=(--seqs 32 --tokens 64 --causal true)
  LLM=(--preset tiny_llama --seq 32 --batch 2 --steps 1 --scan)
  WEGEN=(--clips 2 --batch 2 --steps 1 --set model.llm.num_layers=1)
else
  ATTN=(--seqs 1024 2048 4096 8192 16384 --tokens 16384 --heads 16 --head-dim 128)
  LLM=(--preset qwen2_5_vl_3b --dtype bfloat16 --remat full --attention auto --scan --seq 2048 --batch 2 --steps 3)
  WEGEN=(--clips 8 --batch 16 --steps 3 --set model.dtype=bfloat16 --set model.llm.dtype=bfloat16
    --set model.llm.hidden_size=2048 --set model.llm.intermediate_size=5504 --set model.llm.num_layers=16
    --set model.llm.num_heads=16 --set model.llm.num_kv_heads=16 --set model.llm.attention_impl=auto)
fi
failed=()
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" 2>"$OUT/$name.err" | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - start)) s"
  if [[ $rc != 0 ]]; then
    failed+=("$name")
    tail -20 "$OUT/$name.err"
  fi
}
step kernels 80 "$PY" -m pytest -q -p no:cacheprovider tests/test_kernels.py -k accelerator
step attention 140 "$PY" bench/attention_bench.py "${ATTN[@]}"
step llm_mfu 110 "$PY" -m bench.mfu_bench llm "${LLM[@]}"
step wegen_mfu 140 "$PY" -m bench.mfu_bench wegen "${WEGEN[@]}"
echo "=== summary: ${#failed[@]} failed ${failed[*]:-}; logs in $OUT"
[[ ${#failed[@]} == 0 ]]
