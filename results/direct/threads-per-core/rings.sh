#!/bin/bash
# Server layout A/B at 100k sessions, 33k heartbeats/s, loadgen 6 threads: 2 workers x 3 rings vs 6 workers x 1 ring.
cd /work/main
for rep in 1 2; do
 for cfg in "w2r3:--workers 2 --uring-rings 3" "w6r1:--workers 6"; do
  name=${cfg%%:*}; args=${cfg#*:}
  out=/tmp/exp/rings-$name-r$rep
  flock /tmp/c10m-heavy.lock env C10M_OUT=$out C10M_SERVER_ARGS="--max-sessions 100000 --idle-timeout 600s --max-lag 0s --descriptors direct $args" \
    scripts/campaign demo --progress off --heartbeat 3s --threads 6 > $out.log 2>&1
  echo "$name $rep rc=$?" >> /tmp/exp/rings-done.txt
 done
done
