#!/usr/bin/env bash
# Session 11, call 6: the default (tiny) run's final EMA val_bpb, seeds 1-6, for HEAD's binary
# and the new one; the same seed twice shows whether a binary is deterministic.
set -u
D=$OUT/c6; mkdir -p $D
for seed in 1 1 2 3 4 5 6; do for b in pgolf_base pgolf; do
  build/$b train --seed $seed --out /tmp/tiny_${b} --log-every 1000 > $D/tiny_${b}_$seed.log 2>&1
  echo "$b seed $seed $(grep -o 'val_bpb=[0-9.]*' $D/tiny_${b}_$seed.log)"
done; done | tee $D/summary.txt
awk '{split($4, kv, "="); s[$1] += kv[2]; n[$1]++} END {for (b in s) printf "%s mean %.5f over %d\n", b, s[b] / n[b], n[b]}' $D/summary.txt
