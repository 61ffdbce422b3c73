#!/bin/bash
# retouch.sh: what a page costs to write on this VM when it is fresh, when it
# was freed a moment ago, and when it was freed long enough for the balloon's
# free page reporting to hand it back to the hypervisor.
# Writes one byte per 4 KiB page of 2 GiB of anonymous memory (touch.py),
# three times: right after another run freed it, and after 15 s idle.
set -u
T=$(dirname "$0")/../profiles-run29b/touch.py
P=/sys/module/page_reporting/parameters
echo "# $(date -u +%FT%TZ) kernel $(uname -r)"
echo "page_reporting_order $(cat $P/page_reporting_order)"
for f in /sys/bus/virtio/devices/*; do
    [[ $(cat $f/device) == 0x0005 ]] && echo "balloon $f features $(cut -c1-8 $f/features) (bit 5 = reporting)"
done
r() { cat $P/reported_kib 2>/dev/null || echo '?'; }
echo "reported so far: $(r) KiB"
sleep 15
echo "after 15 s idle:"; python3 "$T" 2; echo "reported: $(r) KiB"
echo "at once, the same pages freed a moment ago:"; python3 "$T" 2; echo "reported: $(r) KiB"
sleep 15
echo "after 15 s idle (reported: $(r) KiB):"; python3 "$T" 2
