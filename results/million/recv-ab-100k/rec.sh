#!/bin/bash
# rec.sh OUT RECV : the 25-ring model (model.sh) with --uring-recv RECV; perf record -g of the
# server for 8 s of the hold (OUT.server.data), then the report of where the wake-ups go.
out=$1; recv=$2
. "$(dirname "$(readlink -f "$0")")/model.sh"
model $out $recv
sleep 22
perf record -F 2000 -g -p $s -o $out.server.data -- sleep 8 2>/dev/null
wait $cpid
python3 - $out $(cat $out.rc) <<'PY'
import json,sys
s=json.load(open(sys.argv[1]+'/summary.json'))
print("%s rc %s recv %s server %s loadgen %s" % (sys.argv[1], sys.argv[2], s['layout'].get('uring_recv'), s['server']['cpu_us_per_heartbeat'], s['loadgen']['cpu_us_per_heartbeat']))
PY
perf report -i $out.server.data --children --sort sym --stdio 2>/dev/null \
  | grep -E "^ +[0-9.]+% +[0-9.]+% .*(sock_def_readable|io_poll_wake|__wake_up_sync_key|__wake_up_common|_raw_spin_unlock_irqrestore|io_req_local_work_add|tcp_v4_rcv|io_send|tcp_sendmsg)\b" | head -20
