#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: create (or reuse) the TPU VM through a queued resource, copy
# this checkout to every worker, install, check the environment, run the same command on all
# workers (--worker=all), and collect each worker's log into ./logs/NAME/.
#
#   launch/tpu_pod.sh --name wegen-v5p64 --zone us-east5-a --type v5p-64 \
#       --workdir /mnt/shared/wegen7b_stage2 -- --config configs/wegen.py:size=7b,stage=2 \
#       --config.data.dir=/mnt/shared/data
#   launch/tpu_pod.sh --dry-run ...      # print the gcloud commands only
#
# --workdir must be one directory that every worker sees (a Filestore NFS or gcsfuse mount):
# Orbax writes one checkpoint from all hosts. Rerunning the command resumes from it. Only
# committed files are copied (git archive HEAD). Check the fit first, on any machine:
#   python -m wegen_jax.tools.aot --config configs/wegen.py:size=7b,stage=2 --topology v5p-64
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/common.sh"

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; echo "options: --name --zone --type --workdir [--project P] [--runtime V] [--spot] [--no-create] [--dry-run] -- TRAIN_ARGS"; }

NAME= ZONE= TYPE= WORKDIR= PROJECT= RUNTIME= SPOT= CREATE=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --type) TYPE=$2; shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --project) PROJECT=$2; shift 2 ;;
    --runtime) RUNTIME=$2; shift 2 ;;
    --spot) SPOT=--spot; shift ;;
    --no-create) CREATE=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (training arguments go after --)" ;;
  esac
done
TRAIN_ARGS=("$@")
need NAME "--name (the TPU VM / queued resource name)"
need ZONE "--zone (e.g. us-east5-a)"
need TYPE "--type (e.g. v5p-64, v6e-64)"
need WORKDIR "--workdir (a directory shared by all workers, e.g. an NFS or gcsfuse mount)"
[[ ${#TRAIN_ARGS[@]} -gt 0 ]] || die "no training arguments: add -- --config configs/...py[:args]"
[[ "$WORKDIR" == /* ]] || die "--workdir $WORKDIR: give an absolute path on a mount that every worker shares"
case "$TYPE" in
  v5p-*) RUNTIME=${RUNTIME:-v2-alpha-tpuv5} ;;
  v6e-*) RUNTIME=${RUNTIME:-v2-alpha-tpuv6e} ;;
  v5litepod-*|v5e-*) RUNTIME=${RUNTIME:-v2-alpha-tpuv5-lite} ;;
  *) [[ -n "$RUNTIME" ]] || die "no default runtime for --type $TYPE: pass --runtime" ;;
esac
need_tool gcloud "install the Google Cloud SDK and run gcloud auth login"
GC=(gcloud compute tpus)
if [[ -n "$PROJECT" ]]; then GC=(gcloud --project "$PROJECT" compute tpus)
elif [[ "$DRY_RUN" != 1 && -z "$(gcloud config get-value project 2>/dev/null)" ]]; then
  die "no Google Cloud project: pass --project P or run gcloud config set project P"
fi
REMOTE_DIR=wegen_jax
TARBALL=/tmp/wegen_jax_$NAME.tar.gz
LOGS=logs/$NAME

# 1. The slice: reuse it when it exists, else queue it and wait until it is ACTIVE.
if [[ "$CREATE" == 1 ]]; then
  if [[ "$DRY_RUN" != 1 ]] && "${GC[@]}" queued-resources describe "$NAME" --zone "$ZONE" >/dev/null 2>&1; then
    echo "reusing queued resource $NAME"
  else
    run "${GC[@]}" queued-resources create "$NAME" --node-id "$NAME" --zone "$ZONE" \
        --accelerator-type "$TYPE" --runtime-version "$RUNTIME" $SPOT
  fi
  if [[ "$DRY_RUN" != 1 ]]; then
    until state=$("${GC[@]}" queued-resources describe "$NAME" --zone "$ZONE" --format='value(state.state)') \
          && [[ "$state" == ACTIVE ]]; do
      [[ "$state" == FAILED || "$state" == SUSPENDED ]] && die "queued resource $NAME is $state"
      echo "waiting for $NAME (state ${state:-unknown})"; sleep 60
    done
  fi
fi

SSH=("${GC[@]}" tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all)
# 2. This checkout (committed files) on every worker, installed with the TPU runtime.
run git -C "$HERE/.." archive --format=tar.gz -o "$TARBALL" HEAD
run "${GC[@]}" tpu-vm scp "$TARBALL" "$NAME:wegen_jax.tar.gz" --zone "$ZONE" --worker=all
run "${SSH[@]}" --command "mkdir -p $REMOTE_DIR && tar xzf wegen_jax.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR \
&& python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[tpu]'"

# 3. Fail fast on a wrong JAX build or a worker without TPU chips.
run "${SSH[@]}" --command "cd $REMOTE_DIR && .venv/bin/python -m wegen_jax.tools.envcheck --platform tpu"

# 4. The same command on all workers; jax discovers the pod (wegen_jax.parallel.distributed).
run "${SSH[@]}" --command "set -o pipefail; cd $REMOTE_DIR && mkdir -p logs && .venv/bin/python -m wegen_jax.train \
--workdir $(quote "$WORKDIR") $(quote_all "${TRAIN_ARGS[@]}") 2>&1 | tee logs/train_\$(hostname).log"

# 5. Logs back here, one file per worker.
run mkdir -p "$LOGS"
run "${GC[@]}" tpu-vm scp "$NAME:$REMOTE_DIR/logs/*" "$LOGS/" --zone "$ZONE" --worker=all
echo "logs in $LOGS; delete the slice when done: ${GC[*]} queued-resources delete $NAME --zone $ZONE --force"
