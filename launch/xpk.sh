#!/usr/bin/env bash
# Train on a GKE TPU cluster with xpk (github.com/AI-Hypercomputer/xpk): xpk builds an image
# from this directory on top of a base image and starts the same command on every TPU VM of
# the slice(s); GKE sets TPU_WORKER_HOSTNAMES, from which jax finds the pod.
#
#   launch/xpk.sh --cluster my-v5p --name wegen7b-s2 --type v5p-64 \
#       --workdir /mnt/shared/wegen7b_stage2 -- --config configs/wegen.py:size=7b,stage=2
#   launch/xpk.sh --dry-run ...           # print the xpk command only
#   xpk workload list --cluster my-v5p    # status; logs: kubectl logs -l jobset.sigs.k8s.io/jobset-name=NAME
#
# Without xpk: launch/gke_jobset.yaml is the equivalent JobSet (envsubst < ... | kubectl apply -f -).
# --workdir must be a volume every worker mounts (Filestore, or a gcsfuse CSI volume).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/common.sh"

CLUSTER= NAME= TYPE= WORKDIR= SLICES=1 PROJECT= ZONE= IMAGE= BASE_IMAGE=python:3.11-slim
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cluster) CLUSTER=$2; shift 2 ;;
    --name) NAME=$2; shift 2 ;;
    --type) TYPE=$2; shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --num-slices) SLICES=$2; shift 2 ;;
    --project) PROJECT=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --image) IMAGE=$2; shift 2 ;;            # a prebuilt image with the repository installed in /app
    --base-image) BASE_IMAGE=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (training arguments go after --)" ;;
  esac
done
TRAIN_ARGS=("$@")
need CLUSTER "--cluster (the GKE cluster xpk created)"
need NAME "--name (the workload name: lower case, digits, -)"
need TYPE "--type (e.g. v5p-64, v6e-64)"
need WORKDIR "--workdir (a shared volume path)"
[[ ${#TRAIN_ARGS[@]} -gt 0 ]] || die "no training arguments: add -- --config configs/...py[:args]"
[[ "$NAME" =~ ^[a-z0-9-]+$ ]] || die "--name $NAME: use lower-case letters, digits and - (a Kubernetes name)"
need_tool xpk "pip install xpk (and gcloud auth login)"

OPTS=()
[[ -n "$PROJECT" ]] && OPTS+=(--project "$PROJECT")
[[ -n "$ZONE" ]] && OPTS+=(--zone "$ZONE")
if [[ -n "$IMAGE" ]]; then
  OPTS+=(--docker-image "$IMAGE"); SETUP="cd /app"
else   # xpk copies --script-dir into the image; install at start-up (the TPU runtime included)
  OPTS+=(--base-docker-image "$BASE_IMAGE" --script-dir "$(cd "$HERE/.." && pwd)"); SETUP="pip install -q -e '.[tpu]'"
fi
COMMAND="set -e; $SETUP; python -m wegen_jax.tools.envcheck --platform tpu; \
python -m wegen_jax.train --workdir $(quote "$WORKDIR") $(quote_all "${TRAIN_ARGS[@]}")"
run xpk workload create --cluster "$CLUSTER" --workload "$NAME" --tpu-type "$TYPE" --num-slices "$SLICES" \
    "${OPTS[@]}" --command "$COMMAND"
