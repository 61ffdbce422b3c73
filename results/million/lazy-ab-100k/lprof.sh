#!/bin/bash
# lprof.sh OUT : demo steer cpu 3s heartbeats, perf record loadgen for 8 s in hold + perf stat
out=$1
cd /work/main
rm -rf $out; mkdir -p $out
( C10M_SERVER_ARGS="--max-sessions 100000 --idle-timeout 600s --steer cpu" C10M_OUT=$out/run scripts/campaign demo --progress off --heartbeat 3s > $out/campaign.log 2>&1 ) &
cpid=$!
for i in $(seq 1 600); do s=$(pgrep -x c10m-server | head -1); l=$(pgrep -x c10m-loadgen | head -1); [[ -n $s && -n $l ]] && break; sleep 0.5; done
sleep 20
perf stat -e task-clock,context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_ppoll,syscalls:sys_enter_read -p $l -o $out/loadgen.perf -- sleep 8 &
perf record -g -F 2999 -p $l -o $out/perf.data -- sleep 8 > /dev/null 2>&1
wait
echo "campaign done"
grep -h -E "task-clock|context|sys_enter" $out/loadgen.perf
python3 -c "
import json;s=json.load(open('$out/run/summary.json'));print('server',s['server']['cpu_us_per_heartbeat'],'loadgen',s['loadgen']['cpu_us_per_heartbeat'])"
