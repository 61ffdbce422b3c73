#!/bin/bash
# wmtoggle.sh OUT PHASES SECS : the million campaign (its scenario: --tick 4ms, server --sched batch, plus --metrics),
# with the wheel toggle patch; from t=60 s of the loadgen alternates eager touches (A) and lazy ones (B) every SECS s
# (file flag /tmp/c10m-wheel), and per phase reads both processes' CPU (utime+stime) and the server's heartbeats counter.
out=$1; phases=$2; secs=$3
cd /tmp/wexp; rm -rf $out
C10M_SERVER_ARGS="--max-sessions 1000000 --idle-timeout 600s --max-lag 0s --steer cpu --sched batch --metrics 127.0.0.1:9911" \
  CARGO_TARGET_DIR=/tmp/wexp/target C10M_OUT=$out scripts/campaign million --progress plain > $out.log 2>&1 &
cpid=$!
for i in $(seq 1 1200); do l=$(pgrep -x c10m-loadgen | head -1); s=$(pgrep -x c10m-server | head -1); [[ -n $l && -n $s ]] && break; sleep 0.5; done
ns=$(ip netns identify $s)
while [[ $(ps -o etimes= -p $l | tr -d ' ') -lt 60 ]]; do sleep 0.5; done
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
hb() { ip netns exec $ns curl -s 127.0.0.1:9911/metrics | awk '/^c10m_server_heartbeats_total/ {printf "%d", $2}'; }
for p in $(seq 1 $phases); do
  if (( p % 2 )); then mode=A; echo eager > /tmp/c10m-wheel; else mode=B; echo lazy > /tmp/c10m-wheel; fi
  sleep 1.5
  s0=$(cpu $s); l0=$(cpu $l); h0=$(hb)
  sleep $secs
  s1=$(cpu $s); l1=$(cpu $l); h1=$(hb)
  echo "$mode $h0 $h1 $s0 $s1 $l0 $l1"
done | tee $out.phases
wait $cpid; echo "campaign rc=$?"
python3 - $out.phases <<'PY'
import sys,statistics as st
rows=[l.split() for l in open(sys.argv[1])]
for m in 'AB':
    rr=[[r[0]]+[int(x) for x in r[1:]] for r in rows if r[0]==m]
    s=[(r[4]-r[3])*1e4/(r[2]-r[1]) for r in rr]; l=[(r[6]-r[5])*1e4/(r[2]-r[1]) for r in rr]
    print(m, 'server mean %.2f (%s)' % (st.mean(s), ' '.join('%.1f'%x for x in s)), '| loadgen mean %.2f (%s)' % (st.mean(l), ' '.join('%.1f'%x for x in l)))
PY
