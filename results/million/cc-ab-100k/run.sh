#!/bin/bash
# Alternating separate runs of the 25-ring model at --tick 4ms: host congestion control bbr vs cubic.
trap 'sysctl -qw net.ipv4.tcp_congestion_control=bbr' EXIT
for i in 1 2 3; do
  for cc in bbr cubic; do
    sysctl -qw net.ipv4.tcp_congestion_control=$cc
    /tmp/tickstat/stat.sh /tmp/ccab/$cc-$i 4ms | head -1 | sed "s/^/$cc /"
  done
done
