#!/bin/bash
# stat.sh OUT RECV : the 25-ring model (model.sh) with --uring-recv RECV; perf stat on the loadgen
# and the server for 8 s of the hold; prints the campaign's summary line.
out=$1; recv=$2
. "$(dirname "$(readlink -f "$0")")/model.sh"
model $out $recv
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
