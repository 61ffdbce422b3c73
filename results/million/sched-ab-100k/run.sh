#!/bin/bash
# run.sh OUT REPO TARGET [stat] : demo at 100k, ~33k hb/s, steer cpu, RLIMIT_NOFILE 2000 (25 loadgen rings per driver as in the million)
out=$1; repo=$2; tgt=$3; stat=${4:-}
cd $repo; rm -rf $out; mkdir -p $(dirname $out)
(
ulimit -n 2000
CARGO_TARGET_DIR=$tgt C10M_SERVER_ARGS="--max-sessions 100000 --idle-timeout 600s --steer cpu ${XS:-}" C10M_OUT=$out scripts/campaign demo --progress off --heartbeat 3s > $out.log 2>&1
echo $? > $out.rc
) &
cpid=$!
if [[ -n $stat ]]; then
  for i in $(seq 1 600); do l=$(pgrep -x c10m-loadgen | head -1); s=$(pgrep -x c10m-server | head -1); [[ -n $l && -n $s ]] && break; sleep 0.5; done
  sleep 22
  ev=task-clock,context-switches,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_ppoll
  perf stat -e $ev -p $l -o $out.lstat -- sleep 8 &
  perf stat -e $ev -p $s -o $out.sstat -- sleep 8
fi
wait $cpid
python3 - $out $(cat $out.rc) <<'PY'
import json,sys
d=sys.argv[1]
s=json.load(open(d+'/summary.json'))
r=s.get('rtt_us_full_hold') or s['rtt_us']
hb=s.get('heartbeats',{})
print("%s rc %s server %s loadgen %s  rtt p50 %s p99 %s unanswered %s" % (d, sys.argv[2], s['server']['cpu_us_per_heartbeat'], s['loadgen']['cpu_us_per_heartbeat'], r['p50'], r['p99'], hb.get('unanswered')))
PY
[[ -n $stat ]] && grep -h -E "task-clock|context|sys_enter" $out.lstat $out.sstat
true
