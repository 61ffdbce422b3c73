#!/bin/bash
# order11.sh: does page_reporting_order 11 (above the buddy allocator's
# largest block, order 10) stop the reporting? Writes 2 GiB, frees it,
# idles 15 s, writes it again; then puts the order back.
set -u
T=$(dirname "$0")/../profiles-run29b/touch.py
P=/sys/module/page_reporting/parameters
old=$(cat $P/page_reporting_order)
trap 'echo $old > $P/page_reporting_order; echo "order back to $(cat $P/page_reporting_order)"' EXIT
echo "# $(date -u +%FT%TZ) kernel $(uname -r)"
echo 11 > $P/page_reporting_order
echo "page_reporting_order $(cat $P/page_reporting_order)"
r() { cat $P/reported_kib; }
python3 "$T" 2; a=$(r); sleep 15; b=$(r)
echo "reported in 15 s idle after freeing 2 GiB: $((b - a)) KiB"
python3 "$T" 2
python3 "$T" 4; a=$(r); sleep 15; b=$(r)
echo "reported in 15 s idle after freeing 4 GiB: $((b - a)) KiB"
python3 "$T" 4
