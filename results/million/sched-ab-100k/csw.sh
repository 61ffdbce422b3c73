#!/bin/bash
# csw.sh OUT REPO TARGET : as run.sh; per-thread voluntary/nonvoluntary switches over 8 s of the hold
out=$1; repo=$2; tgt=$3
cd $repo; rm -rf $out
(
ulimit -n 2000
CARGO_TARGET_DIR=$tgt C10M_SERVER_ARGS="--max-sessions 100000 --idle-timeout 600s --steer cpu" C10M_OUT=$out scripts/campaign demo --progress off --heartbeat 3s > $out.log 2>&1
) &
cpid=$!
for i in $(seq 1 600); do l=$(pgrep -x c10m-loadgen | head -1); s=$(pgrep -x c10m-server | head -1); [[ -n $l && -n $s ]] && break; sleep 0.5; done
sleep 22
snap() { for p in $l $s; do for t in /proc/$p/task/*; do echo "$p $(cat $t/comm) $(grep -E '^(voluntary|nonvoluntary)_ctxt' $t/status | awk '{print $2}' | tr '\n' ' ')"; done; done; }
snap > $out.csw0; sleep 8; snap > $out.csw1
wait $cpid
paste $out.csw0 $out.csw1 | awk '{dv=$8-$3; dn=$9-$4; if (dv+dn>100) print $1, $2, "vol", dv, "invol", dn}'
