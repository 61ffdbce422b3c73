#!/bin/bash
# mprobe.sh OUT : million campaign; perf stat (syscalls) on loadgen + server for 10 s at t=100, perf record loadgen 5 s at t=115
out=$1; rm -rf $out; mkdir -p $out
cd /work/main
C10M_OUT=$out/run scripts/campaign million --progress off > $out/campaign.log 2>&1 &
cpid=$!
for i in $(seq 1 600); do sleep 0.2; lp=$(pgrep -f "c10m-loadgen run" | head -1); [[ -n $lp ]] && break; done
at() { while [[ $(ps -o etimes= -p $lp 2>/dev/null | tr -d ' ') -lt $1 ]]; do sleep 0.1; done; }
at 100
sp=$(pgrep -x c10m-server | head -1)
ev=task-clock,context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_ppoll,syscalls:sys_enter_read
perf stat -e $ev -p $lp -o $out/loadgen.stat -- sleep 10 &
perf stat -e $ev -p $sp -o $out/server.stat -- sleep 10 &
wait %2 %3
at 115
perf record -g -F 999 -p $lp -o $out/loadgen.data -- sleep 5 > /dev/null 2>&1
wait $cpid; echo rc=$?
grep -h -E "task-clock|context|sys_enter" $out/loadgen.stat $out/server.stat
grep -A12 "sessions held" $out/campaign.log
