#!/usr/bin/env bash
# results/reliability/burst-test-ab/run.sh OLD_TEST_BIN NEW_TEST_BIN [PAIRS]
#
# The server test `an_unpaced_burst_of_15000_connects_is_absorbed` (15 000
# unpaced non-blocking connects from 2 threads against a debug c10m-server,
# --max-lag 100ms, the default) on every backend, one after the other in
# one test process as CI runs them (epoll, epoll_thread, uring,
# uring_direct, uring_rings), alternately with two builds of the server
# test binary: OLD (a plain-descriptor server's table grows as sessions
# arrive) and NEW (grown to --max-sessions at start-up,
# sys::presize_fd_table). Both carry the same test of the burst (which
# prints the worst loop lag); each runs the c10m-server it was built with.
# PAIRS pairs (default 8). Output: runs.txt, one line per backend and run:
# pair, build, the test's verdict line (or its failure).
set -euo pipefail
old=$1 new=$2 pairs=${3:-8}
out=$(cd "$(dirname "$0")" && pwd)
: >"$out/runs.txt"
for pair in $(seq "$pairs"); do
    for build in old new; do
        bin=$old; [[ $build == new ]] && bin=$new
        "$bin" an_unpaced_burst_of_15000_connects_is_absorbed --nocapture --test-threads 1 2>&1 \
            | grep -oE "[A-Za-z]+: 15000 unpaced connects issued.*|[0-9]+ of 15000 refused busy.*" \
            | sed "s/^/$pair $build /" | tee -a "$out/runs.txt" || true
    done
done
