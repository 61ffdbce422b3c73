#!/bin/bash
# toggle.sh OUT REPO TARGET PHASES SECS : the 25-ring demo model (RLIMIT_NOFILE 2000, 100k sessions,
# ~33k hb/s, steer cpu) held long; after 25 s alternates phase A (server SCHED_OTHER) and phase B
# (server SCHED_BATCH, chrt) every SECS s; per phase: CPU (utime+stime) of server and loadgen over heartbeats the server answered.
out=$1; repo=$2; tgt=$3; phases=$4; secs=$5

cd $repo; rm -rf $out
(
ulimit -n 2000
CARGO_TARGET_DIR=$tgt C10M_SERVER_ARGS="--max-sessions 100000 --idle-timeout 600s --steer cpu --sched batch --metrics 127.0.0.1:9911" C10M_OUT=$out scripts/campaign ab-long --progress off --heartbeat 3s --tick 4ms > $out.log 2>&1
) &
cpid=$!
for i in $(seq 1 600); do l=$(pgrep -x c10m-loadgen | head -1); s=$(pgrep -x c10m-server | head -1); [[ -n $l && -n $s ]] && break; sleep 0.5; done
sleep 25
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
hb() { curl -s 127.0.0.1:9911/metrics | awk '/^c10m_server_heartbeats_total/ {printf "%d", $2}'; }
for p in $(seq 1 $phases); do
  if (( p % 2 )); then mode=A; echo eager > /tmp/c10m-wheel; else mode=B; echo lazy > /tmp/c10m-wheel; fi
  sleep 1.5
  s0=$(cpu $s); l0=$(cpu $l); h0=$(hb); t0=$(date +%s.%N)
  sleep $secs
  s1=$(cpu $s); l1=$(cpu $l); h1=$(hb); t1=$(date +%s.%N)
  echo "$mode $h0 $h1 $s0 $s1 $l0 $l1"
done | tee $out.phases
wait $cpid
python3 - $out.phases <<'PY'
import sys,statistics as st
rows=[l.split() for l in open(sys.argv[1])]
for m in 'AB':
    rr=[[r[0]]+[int(x) for x in r[1:]] for r in rows if r[0]==m]
    s=[(r[4]-r[3])*1e4/(r[2]-r[1]) for r in rr]; l=[(r[6]-r[5])*1e4/(r[2]-r[1]) for r in rr]
    print(m, 'server mean %.2f (%s)' % (st.mean(s), ' '.join('%.1f'%x for x in s)), '| loadgen mean %.2f (%s)' % (st.mean(l), ' '.join('%.1f'%x for x in l)))
PY
