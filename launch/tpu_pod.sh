#!/usr/bin/env bash
# Runs rlaif_jax stages on a Cloud TPU VM pod: every worker runs the same
# command and jax.distributed.initialize() joins them (RLAIF_JAX_DISTRIBUTED=1).
#
#   launch/tpu_pod.sh [options] up                 create the pod, or reuse it if it exists
#   launch/tpu_pod.sh [options] install            copy this checkout to every worker, pip install .[tpu]
#   launch/tpu_pod.sh [options] run -- <args>      python3 -m rlaif_jax.main <args> on all workers
#   launch/tpu_pod.sh [options] stop               SIGTERM the stage on all workers (it saves, exits 75)
#   launch/tpu_pod.sh [options] down               delete the pod
#
# options: --name NAME --zone ZONE --project PROJECT --type ACCELERATOR (e.g. v4-32)
#          --runtime VERSION (default tpu-ubuntu2204-base) --spot | --preemptible
#          --max_restarts N (default 20) --dry_run
# Environment defaults: TPU_NAME, TPU_ZONE, TPU_PROJECT, TPU_TYPE.
# Keep the workdir on GCS (--workdir=gs://bucket/run) so checkpoints, labels and
# reports outlive the pod; a rerun of `run` resumes from them.
# With --spot or --preemptible, `run` resumes by itself: while the stage exits
# 75 (preempted: it saved the step in flight), ssh fails (255) or the VM is no
# longer READY, the VM is recreated if needed, reinstalled and the same command
# rerun, at most N times. Any other failure ends the loop with its status.
set -euo pipefail
PREEMPTED=75   # rlaif_jax.preemption.PREEMPTED_EXIT
name=${TPU_NAME:-rlaif}; zone=${TPU_ZONE:-us-central2-b}; project=${TPU_PROJECT:-}
type=${TPU_TYPE:-v4-32}; runtime=tpu-ubuntu2204-base; capacity=(); dry=0; max_restarts=20
usage() { sed -n '2,22p' "$0" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name=$2; shift 2;;
    --zone) zone=$2; shift 2;;
    --project) project=$2; shift 2;;
    --type) type=$2; shift 2;;
    --runtime) runtime=$2; shift 2;;
    --spot|--preemptible) capacity=("$1"); shift;;
    --max_restarts) max_restarts=$2; shift 2;;
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
create() {
  run gcloud compute tpus tpu-vm create "$name" "${where[@]}" \
      --accelerator-type="$type" --version="$runtime" ${capacity[@]+"${capacity[@]}"}
}
install() {
  local src tarball=/tmp/rlaif_jax_src.tgz
  src=$(cd "$(dirname "$0")/.." && pwd)
  run tar -czf "$tarball" -C "$src" --exclude=.git --exclude='*.egg-info' .
  run gcloud compute tpus tpu-vm scp "$tarball" "$name":rlaif_jax_src.tgz "${where[@]}" --worker=all
  on_all_workers "mkdir -p ~/rlaif_jax && tar -xzf ~/rlaif_jax_src.tgz -C ~/rlaif_jax && cd ~/rlaif_jax && python3 -m pip install -q -e '.[tpu]'"
}
vm_state() {
  run gcloud compute tpus tpu-vm describe "$name" "${where[@]}" --format='value(state)'
}

case "$action" in
  up)
    if ((!dry)) && gcloud compute tpus tpu-vm describe "$name" "${where[@]}" >/dev/null 2>&1; then
      echo "reusing TPU VM $name"
    else
      create
    fi;;
  install)
    install;;
  run)
    [[ "${1:-}" == "--" ]] && shift
    [[ $# -gt 0 ]] || { echo "error: pass rlaif_jax.main arguments after run --" >&2; exit 2; }
    args=$(printf '%q ' "$@")
    stage="cd ~/rlaif_jax && RLAIF_JAX_DISTRIBUTED=1 python3 -m rlaif_jax.main ${args% }"
    if ((${#capacity[@]} == 0)); then on_all_workers "$stage"; exit; fi
    if ((dry)); then
      echo "# auto-resume (${capacity[0]}): until the stage exits 0, at most $max_restarts restarts:"
      on_all_workers "$stage"
      echo "# on exit $PREEMPTED, ssh failure or a VM not READY: state; if not READY recreate + install; rerun"
      vm_state
      run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
      create
      install
      on_all_workers "$stage"
      exit 0
    fi
    for ((restarts = 0; ; restarts++)); do
      status=0; on_all_workers "$stage" || status=$?
      ((status == 0)) && exit 0
      state=$(vm_state 2>/dev/null || echo MISSING)
      if [[ "$state" == READY ]] && ((status != PREEMPTED && status != 255)); then
        echo "error: the stage failed with status $status (not a preemption)" >&2; exit "$status"
      fi
      if ((restarts >= max_restarts)); then
        echo "error: still preempted after $max_restarts restarts" >&2; exit "$status"
      fi
      echo "preempted (status $status, VM ${state:-?}): resuming from the workdir" >&2
      if [[ "$state" != READY ]]; then
        [[ "$state" == MISSING ]] || run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
        until create; do sleep 60; done   # spot capacity may take a while to return
        install
      fi
    done;;
  stop)
    # SIGTERM: each worker finishes the step in flight, saves it and exits 75.
    on_all_workers "pkill -TERM -f '[r]laif_jax.main' || true";;  # [r]: not this shell itself
  down)
    run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet;;
esac
