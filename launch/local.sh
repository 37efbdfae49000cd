#!/usr/bin/env bash
# Runs one rlaif_jax stage as N local processes joined by jax.distributed over
# loopback – the same multi-controller code path as a TPU pod, on one machine.
#
#   launch/local.sh [-n PROCS] [-d DEVICES_PER_PROC] [--dry_run] -- <rlaif_jax.main args>
#   launch/local.sh -n 2 -d 4 -- --config=configs/sft.py:toy --workdir=/tmp/w
#
# On CPU each process gets DEVICES_PER_PROC fake devices and gloo collectives.
# The interpreter is $PYTHON (tests set it to theirs), else python3 from PATH.
# SIGTERM/SIGINT to this script reach every process as SIGTERM (a preemption:
# each finishes its step, saves and exits 75); the script exits with the first
# non-zero status of its processes.
set -euo pipefail
procs=2; devs=4; dry=0; port=${RLAIF_COORDINATOR_PORT:-$((20000 + RANDOM % 20000))}
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n) procs=$2; shift 2;;
    -d) devs=$2; shift 2;;
    --dry_run) dry=1; shift;;
    --) shift; break;;
    *) echo "usage: $0 [-n PROCS] [-d DEVICES_PER_PROC] [--dry_run] -- <main args>" >&2; exit 2;;
  esac
done
[[ $# -gt 0 ]] || { echo "error: pass the stage's arguments after --" >&2; exit 2; }

python=${PYTHON:-python3}
pids=()
forward() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; }
trap forward INT TERM
trap forward EXIT
for ((i = 0; i < procs; i++)); do
  cmd=(env "XLA_FLAGS=--xla_force_host_platform_device_count=$devs" "NPROC=$((2 * devs))"
       "JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}"
       "$python" -m rlaif_jax.main "--coordinator_address=localhost:$port"
       "--num_processes=$procs" "--process_id=$i" "$@")
  if ((dry)); then printf '%q ' "${cmd[@]}"; echo; continue; fi
  "${cmd[@]}" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do
  # `wait` also returns when a trapped signal arrives: wait again until p is gone
  while :; do
    rc=0; wait "$p" || rc=$?
    kill -0 "$p" 2>/dev/null || break
  done
  ((status)) || status=$rc
done
pids=()
exit $status
