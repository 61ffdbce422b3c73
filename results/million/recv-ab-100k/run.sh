#!/bin/bash
# run.sh OUT PAIRS : alternating separate campaigns of the 25-ring model, --uring-recv armed then
# deferred, PAIRS times (stat.sh); one summary line each in OUT/runs.txt.
out=$1; pairs=${2:-3}
here=$(dirname "$(readlink -f "$0")")
mkdir -p $out
for i in $(seq 1 $pairs); do
  for recv in armed deferred; do
    bash $here/stat.sh $out/$recv-$i $recv | head -1 | sed "s/^/$recv /" | tee -a $out/runs.txt
  done
done
