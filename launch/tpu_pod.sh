#!/usr/bin/env bash
# Runs rlaif_jax stages on a Cloud TPU VM pod: every worker runs the same
# command and jax.distributed.initialize() joins them (RLAIF_JAX_DISTRIBUTED=1).
#
#   launch/tpu_pod.sh [options] up                 create the pod, or reuse it if it exists
#   launch/tpu_pod.sh [options] install            copy this checkout to every worker, pip install .[tpu]
#   launch/tpu_pod.sh [options] run -- <args>      python -m rlaif_jax.main <args> on all workers
#   launch/tpu_pod.sh [options] stop               stop a running stage on all workers (checkpoints stay)
#   launch/tpu_pod.sh [options] down               delete the pod
#
# options: --name NAME --zone ZONE --project PROJECT --type ACCELERATOR (e.g. v4-32)
#          --runtime VERSION (default tpu-ubuntu2204-base) --spot --dry_run
# Environment defaults: TPU_NAME, TPU_ZONE, TPU_PROJECT, TPU_TYPE.
# Keep the workdir on GCS (--workdir=gs://bucket/run) so checkpoints, labels and
# reports outlive the pod; a rerun of `run` resumes from them.
set -euo pipefail
name=${TPU_NAME:-rlaif}; zone=${TPU_ZONE:-us-central2-b}; project=${TPU_PROJECT:-}
type=${TPU_TYPE:-v4-32}; runtime=tpu-ubuntu2204-base; spot=0; dry=0
usage() { sed -n '2,16p' "$0" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name=$2; shift 2;;
    --zone) zone=$2; shift 2;;
    --project) project=$2; shift 2;;
    --type) type=$2; shift 2;;
    --runtime) runtime=$2; shift 2;;
    --spot) spot=1; shift;;
    --dry_run) dry=1; shift;;
    up|install|run|stop|down) action=$1; shift; break;;
    *) usage;;
  esac
done
[[ -n "${action:-}" ]] || usage

where=(--zone="$zone")
[[ -n "$project" ]] && where+=(--project="$project")

# Prints the command (shell-quoted) under --dry_run, runs it otherwise.
run() {
  if ((dry)); then printf '%q ' "$@"; echo; else "$@"; fi
}
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$1"
}

case "$action" in
  up)
    if ((!dry)) && gcloud compute tpus tpu-vm describe "$name" "${where[@]}" >/dev/null 2>&1; then
      echo "reusing TPU VM $name"
    else
      extra=(); ((spot)) && extra+=(--spot)
      run gcloud compute tpus tpu-vm create "$name" "${where[@]}" \
          --accelerator-type="$type" --version="$runtime" "${extra[@]}"
    fi;;
  install)
    src=$(cd "$(dirname "$0")/.." && pwd)
    tarball=/tmp/rlaif_jax_src.tgz
    run tar -czf "$tarball" -C "$src" --exclude=.git --exclude='*.egg-info' .
    run gcloud compute tpus tpu-vm scp "$tarball" "$name":rlaif_jax_src.tgz "${where[@]}" --worker=all
    on_all_workers "mkdir -p ~/rlaif_jax && tar -xzf ~/rlaif_jax_src.tgz -C ~/rlaif_jax && cd ~/rlaif_jax && pip install -q -e '.[tpu]'";;
  run)
    [[ "${1:-}" == "--" ]] && shift
    [[ $# -gt 0 ]] || { echo "error: pass rlaif_jax.main arguments after run --" >&2; exit 2; }
    args=$(printf '%q ' "$@")
    on_all_workers "cd ~/rlaif_jax && RLAIF_JAX_DISTRIBUTED=1 python -m rlaif_jax.main ${args% }";;
  stop)
    # SIGTERM: the current step finishes; the last checkpoint on GCS is the resume point.
    on_all_workers "pkill -TERM -f 'python -m rlaif_jax.main' || true";;
  down)
    run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet;;
esac
