#!/bin/bash
# Loadgen driver A/B at 100k sessions, 33k heartbeats/s, server 2 workers x 3 rings (direct): epoll 6 drivers vs io_uring 2 drivers.
cd /work/main
for rep in 1 2; do
 for cfg in "epoll6:--io epoll --threads 6" "uring2:--io uring --threads 2"; do
  name=${cfg%%:*}; args=${cfg#*:}
  out=/tmp/exp/io-$name-r$rep
  rm -rf $out
  flock /tmp/c10m-heavy.lock env C10M_OUT=$out C10M_SERVER_ARGS="--max-sessions 100000 --idle-timeout 600s --max-lag 0s --descriptors direct --workers 2 --uring-rings 3" \
    scripts/campaign demo --progress off --heartbeat 3s $args > $out.log 2>&1
  echo "$name $rep rc=$?" >> /tmp/exp/io-done.txt
 done
done
