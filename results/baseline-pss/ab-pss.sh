#!/usr/bin/env bash
# A/B: loadgen all-in PSS at the ci scenario, old (e284013) vs HEAD loadgen, same HEAD server
set -u
cd /work/main
for round in 1 2; do
  for which in old new; do
    if [[ $which == old ]]; then lg=/tmp/old-target/release/c10m-loadgen; else lg=target/release/c10m-loadgen; fi
    out=/tmp/ab-pss/$which-$round; rm -rf $out; mkdir -p $out
    target/release/c10m-server --listen 127.0.0.1:0 --procs 4 --max-sessions 60000 --idle-timeout 120s > $out/server.log 2>&1 &
    sp=$!
    for i in $(seq 100); do addr=$(sed -n 's/^c10m-server listening on \([0-9.:]*\).*/\1/p' $out/server.log|head -1); [[ -n $addr ]] && break; sleep 0.1; done
    $lg run --scenario loadgen/scenarios/ci.toml --target $addr --server-pid $sp --out $out --progress off > $out/lg.log 2>&1
    kill -INT $sp; wait $sp
    python3 -c "import json;s=json.load(open('$out/summary.json'));l=s['loadgen'];print('$which-$round', l['pss_bytes_per_session_all_in'], l['pss_bytes'], l['rss_bytes_per_session'], l.get('rss_baseline_bytes'))"
  done
done
