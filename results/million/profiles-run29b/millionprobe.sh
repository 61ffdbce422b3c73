#!/bin/bash
# usage: millionprobe.sh NAME [loadgen flags]; perf in the ramp (t=10), hold (t=100) and drain (t=197)
name=$1; shift
out=/tmp/exp/mp-$name; rm -rf $out /tmp/exp/mp-$name-perf; mkdir -p /tmp/exp/mp-$name-perf
p=/tmp/exp/mp-$name-perf
cd /work/main
C10M_OUT=$out scripts/campaign million --progress off "$@" > $p/campaign.log 2>&1 &
cpid=$!
for i in $(seq 1 600); do sleep 0.2; lp=$(pgrep -f "c10m-loadgen run" | head -1); [[ -n $lp ]] && break; done
echo "loadgen $lp" >> $p/probe.log
at() { while [[ $(ps -o etimes= -p $lp 2>/dev/null | tr -d ' ') -lt $1 ]]; do sleep 0.1; done; }
at 9;  perf record -a -g -F 999 -o $p/ramp.data -- sleep 4 >> $p/probe.log 2>&1
at 100; perf record -a -g -F 999 -o $p/hold.data -- sleep 5 >> $p/probe.log 2>&1
at 198; perf record -a -g -F 999 -o $p/drain.data -- sleep 8 >> $p/probe.log 2>&1
wait $cpid; echo rc=$? >> $p/probe.log
