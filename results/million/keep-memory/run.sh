#!/bin/bash
# run.sh: two million campaigns back to back with the VM's free page
# reporting stopped (page_reporting_order 11, above the largest block), so
# the slab the first run's drain frees stays backed for the second; the old
# order is put back on exit.
#   run 47: the scenario as it is (its memory was reported back before: cold)
#   run 48: at once after it, --rate 90000 (the scenario's 60 000/s cannot
#           average more than 60 000/s to all open), as runs 31, 37 and 44
set -u
P=/sys/module/page_reporting/parameters/page_reporting_order
old=$(cat $P)
trap 'echo $old > $P' EXIT
echo 11 > $P
cd /work/main
run() {
    local name=$1; shift
    C10M_OUT=results/million/$name scripts/campaign million --progress plain "$@"
    local rc=$?
    echo "page_reporting_order $(cat $P) during the run (was $old, put back after runs 47-48); exit $rc" \
        >>results/million/$name/command.txt
}
run run47-keep-memory
run run48-keep-memory-90k --rate 90000
