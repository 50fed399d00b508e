#!/usr/bin/env bash
# Session 13, call 1: the warp-specialised attention backward (pgolf: 3 consumer warpgroups at
# D = 64; pgolf_2wg: 2) against HEAD's binary (pgolf_base). Attention tests, then bench attention.
set -u
D=$OUT/c1; mkdir -p $D
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
timeout 300 build/pgolf_tests -tc='*attention*' > $D/tests.log 2>&1; echo "tests rc=$?" | tee -a $D/summary.txt
tail -3 $D/tests.log | tee -a $D/summary.txt
grep -E "ERROR|FAILED|rel err" $D/tests.log | head -40 >> $D/summary.txt
for b in pgolf_base pgolf pgolf_2wg; do
  timeout 120 build/$b bench attention --batch 24 --head-dims 64 128 32 > $D/bench_attention_$b.log 2>&1
  echo "$b rc=$?" >> $D/summary.txt
  grep -E "bwd|fwd" $D/bench_attention_$b.log | sed "s/^/$b /" | cut -c1-120 >> $D/summary.txt
done
cat $D/summary.txt
