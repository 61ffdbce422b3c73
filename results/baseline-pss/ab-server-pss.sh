#!/usr/bin/env bash
# A/B: server all-in PSS at the ci scenario, old (1ad3f5f, before issue 18)
# vs HEAD server, the same HEAD loadgen, alternating, 2 rounds.
set -u
cd /work/main
for round in 1 2; do
  for which in old new; do
    if [[ $which == old ]]; then sv=/tmp/old-target/release/c10m-server; else sv=target/release/c10m-server; fi
    out=/tmp/ab-pss/server-$which-$round; rm -rf $out; mkdir -p $out
    $sv --listen 127.0.0.1:0 --procs 4 --max-sessions 60000 --idle-timeout 120s > $out/server.log 2>&1 &
    sp=$!
    for i in $(seq 100); do addr=$(sed -n 's/^c10m-server listening on \([0-9.:]*\).*/\1/p' $out/server.log|head -1); [[ -n $addr ]] && break; sleep 0.1; done
    target/release/c10m-loadgen run --scenario loadgen/scenarios/ci.toml --target $addr --server-pid $sp --out $out --progress off > $out/lg.log 2>&1
    kill -INT $sp; wait $sp
    python3 -c "import json;s=json.load(open('$out/summary.json'))['server'];print('$which-$round', 'all-in', s['pss_bytes_per_session_all_in'], 'marginal', s['rss_bytes_per_session'])"
  done
done
