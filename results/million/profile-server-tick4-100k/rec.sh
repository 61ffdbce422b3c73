#!/bin/bash
out=/tmp/prof/run;  # perf data: /tmp/prof/server.data
 cd /work/main; rm -rf $out
(
ulimit -n 2000
C10M_SERVER_ARGS="--max-sessions 100000 --idle-timeout 600s --steer cpu --sched batch" C10M_OUT=$out scripts/campaign demo --progress off --heartbeat 3s --tick 4ms > $out.log 2>&1
echo $? > $out.rc
) &
cpid=$!
for i in $(seq 1 600); do l=$(pgrep -x c10m-loadgen | head -1); s=$(pgrep -x c10m-server | head -1); [[ -n $l && -n $s ]] && break; sleep 0.5; done
sleep 22
perf record -F 2000 -g -p $s -o /tmp/prof/server.data -- sleep 8 2>/dev/null
wait $cpid
python3 - $out <<'PY'
import json,sys
s=json.load(open(sys.argv[1]+'/summary.json'))
print("server", s['server']['cpu_us_per_heartbeat'], "loadgen", s['loadgen']['cpu_us_per_heartbeat'])
PY
