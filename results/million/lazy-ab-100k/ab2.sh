#!/bin/bash
# ab2.sh OUT REPO TARGET [extra args]
out=$1; repo=$2; tgt=$3; shift 3
cd $repo
rm -rf $out
CARGO_TARGET_DIR=$tgt C10M_SERVER_ARGS="--max-sessions 100000 --idle-timeout 600s --steer cpu" C10M_OUT=$out scripts/campaign demo --progress off --heartbeat 3s "$@" > $out.log 2>&1
rc=$?
python3 - $out $rc <<'PY'
import json,sys
d=sys.argv[1]
s=json.load(open(d+'/summary.json'))
r=s.get('rtt_us_full_hold') or s['rtt_us']
hb=s.get('heartbeats',{})
print("%s rc %s server %s loadgen %s  rtt_full_hold p50 %s p99 %s unanswered %s" % (d, sys.argv[2], s['server']['cpu_us_per_heartbeat'], s['loadgen']['cpu_us_per_heartbeat'], r['p50'], r['p99'], hb.get('unanswered')))
PY
