#!/bin/bash
# Thread-count A/B at 100k sessions, 33k heartbeats/s: does CPU per heartbeat grow with threads per core?
cd /work/main
for rep in 1 2; do
 for n in 6 51; do
  out=/tmp/exp/t$n-r$rep
  flock /tmp/c10m-heavy.lock env C10M_OUT=$out C10M_SERVER_ARGS="--max-sessions 100000 --idle-timeout 600s --max-lag 0s --descriptors direct --workers $n --uring-buffers 512" \
    scripts/campaign demo --progress off --heartbeat 3s --threads $n > $out.log 2>&1
  echo "$n $rep rc=$?" >> /tmp/exp/done.txt
 done
done
