#!/bin/bash
# Sourced by stat.sh and rec.sh: model OUT RECV starts, in the background, the 25-ring model (the demo
# at 100 000 sessions, --heartbeat 3s: ~33 000 heartbeats/s, --tick 4ms, ulimit -n 2000: 50 rings a
# side, server --steer cpu --sched batch, --io uring) with the loadgen's --uring-recv RECV, and sets
# cpid, and l and s (the loadgen's and the server's pids) once both run. Run from the repository
# root, as root, with nothing else running.
model() {
  local out=$1 recv=$2
  rm -rf $out; mkdir -p "$(dirname "$out")"
  (
  ulimit -n 2000
  C10M_SERVER_ARGS="--max-sessions 100000 --idle-timeout 600s --steer cpu --sched batch" C10M_OUT=$out \
    scripts/campaign demo --progress off --heartbeat 3s --tick 4ms --io uring --uring-recv $recv > $out.log 2>&1
  echo $? > $out.rc
  ) &
  cpid=$!
  for i in $(seq 1 600); do l=$(pgrep -x c10m-loadgen | head -1); s=$(pgrep -x c10m-server | head -1); [[ -n $l && -n $s ]] && break; sleep 0.5; done
}
