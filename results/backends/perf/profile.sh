#!/bin/bash
# results/backends/perf/profile.sh BACKEND OUTDIR
# One profiled run of the bench-backends scenario (15 000 sessions, 250 ms
# heartbeats, server on CPU 0, loadgen on CPU 1): 5 s of `perf record -g`
# on the server during the hold, then 3 s of `perf stat` (context switches,
# io_uring_enter and epoll_wait calls), then the loadgen's summary. The
# flat profile for categorize.py is
#   perf report -i OUTDIR/perf.data --no-children --sort dso,sym --stdio | grep -E '^ +[0-9.]+%'
# BIN: directory with release c10m-server and c10m-loadgen (default target/release).
set -u
b=$1; o=$2
mkdir -p "$o"
bin=${BIN:-$(cd "$(dirname "$0")/../../.." && pwd)/target/release}
"$bin/c10m-server" --listen 127.0.0.1:0 --backend "$b" --workers 1 --cores 0 --max-sessions 16000 \
    --stats-interval 1s >"$o/server.log" 2>&1 &
sp=$!
sleep 0.5
addr=$(sed -n 's/^c10m-server listening on \([0-9.:]*\).*/\1/p' "$o/server.log" | head -n1)
taskset -c 1 "$bin/c10m-loadgen" run --target "$addr" --sessions 15000 --rate 20000 --max-inflight 256 \
    --hold 14s --heartbeat 250ms --seed 1 --threads 1 --procs 1 --server-pid "$sp" \
    --out "$o/loadgen" --progress off >"$o/loadgen.log" 2>&1 &
lp=$!
sleep 5
perf record -g -o "$o/perf.data" -p "$sp" -- sleep 5 >/dev/null 2>&1
perf stat -e task-clock,context-switches,cpu-migrations,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_epoll_wait \
    -p "$sp" -- sleep 3 2>"$o/perfstat.txt"
wait "$lp"
kill -TERM "$sp"; wait "$sp"
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['server']['cpu_us_per_heartbeat'], 'us/heartbeat', d['server']['rss_bytes_per_session'], 'B/session')" "$o/loadgen/summary.json"
