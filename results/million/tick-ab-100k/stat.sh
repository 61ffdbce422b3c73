#!/bin/bash
# stat.sh OUT TICK : the 25-ring model (demo at 100k, --heartbeat 3s, ulimit -n 2000, server --steer cpu --sched batch)
# with --tick TICK; perf stat on the loadgen and the server for 8 s of the hold.
out=$1; tick=$2
cd /work/main; rm -rf $out
(
ulimit -n 2000
C10M_SERVER_ARGS="--max-sessions 100000 --idle-timeout 600s --steer cpu --sched batch" C10M_OUT=$out scripts/campaign demo --progress off --heartbeat 3s --tick $tick > $out.log 2>&1
echo $? > $out.rc
) &
cpid=$!
for i in $(seq 1 600); do l=$(pgrep -x c10m-loadgen | head -1); s=$(pgrep -x c10m-server | head -1); [[ -n $l && -n $s ]] && break; sleep 0.5; done
sleep 22
ev=task-clock,context-switches,cpu-migrations,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_ppoll,irq:softirq_entry,timer:hrtimer_expire_entry
perf stat -e $ev -p $l -o $out.lstat -- sleep 8 &
perf stat -e $ev -p $s -o $out.sstat -- sleep 8
wait $cpid
python3 - $out $(cat $out.rc) <<'PY'
import json,sys
d=sys.argv[1]
s=json.load(open(d+'/summary.json'))
r=s.get('rtt_us_full_hold') or s['rtt_us']
print("%s rc %s server %s loadgen %s  rtt p50 %s p99 %s unanswered %s" % (d, sys.argv[2], s['server']['cpu_us_per_heartbeat'], s['loadgen']['cpu_us_per_heartbeat'], r['p50'], r['p99'], s['heartbeats'].get('unanswered')))
PY
grep -h -E "task-clock|context|migrations|sys_enter|softirq|hrtimer" $out.lstat $out.sstat
