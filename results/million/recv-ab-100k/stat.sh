#!/bin/bash
# stat.sh OUT RECV : the 25-ring model (the demo at 100 000 sessions, --heartbeat 3s: ~33 000
# heartbeats/s, --tick 4ms, ulimit -n 2000: 50 rings a side, server --steer cpu --sched batch)
# with the loadgen's --uring-recv RECV; perf stat on the loadgen and the server for 8 s of the hold.
# Run from the repository root, as root, with nothing else running.
out=$1; recv=$2
rm -rf $out; mkdir -p "$(dirname "$out")"
(
ulimit -n 2000
C10M_SERVER_ARGS="--max-sessions 100000 --idle-timeout 600s --steer cpu --sched batch" C10M_OUT=$out \
  scripts/campaign demo --progress off --heartbeat 3s --tick 4ms --io uring --uring-recv $recv > $out.log 2>&1
echo $? > $out.rc
) &
cpid=$!
for i in $(seq 1 600); do l=$(pgrep -x c10m-loadgen | head -1); s=$(pgrep -x c10m-server | head -1); [[ -n $l && -n $s ]] && break; sleep 0.5; done
sleep 22
ev=task-clock,context-switches,cpu-migrations,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_ppoll,irq:softirq_entry,timer:hrtimer_expire_entry
perf stat -e $ev -p $l -o $out.loadgen-perf-stat.txt -- sleep 8 &
perf stat -e $ev -p $s -o $out.server-perf-stat.txt -- sleep 8
wait $cpid
python3 - $out $(cat $out.rc) <<'PY'
import json,sys
d=sys.argv[1]
s=json.load(open(d+'/summary.json'))
r=s.get('rtt_us_full_hold') or s['rtt_us']
print("%s rc %s recv %s server %s loadgen %s  rtt p50 %s p99 %s unanswered %s errors %s" % (d, sys.argv[2], s['layout'].get('uring_recv'), s['server']['cpu_us_per_heartbeat'], s['loadgen']['cpu_us_per_heartbeat'], r['p50'], r['p99'], s['heartbeats'].get('unanswered'), sum(v for v in s['errors'].values() if isinstance(v,(int,float)))))
PY
