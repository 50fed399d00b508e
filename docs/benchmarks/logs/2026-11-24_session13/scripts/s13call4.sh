#!/usr/bin/env bash
# Session 13, call 4: dQ products one step late (pgolf, three dS slots; pgolf_ns2: two
# dS slots) against HEAD (pgolf_base). Attention tests, bench attention.
set -u
D=$OUT/c4; mkdir -p $D
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
timeout 300 build/pgolf_tests -tc='*attention*' > $D/tests.log 2>&1; echo "tests rc=$?" | tee -a $D/summary.txt
tail -3 $D/tests.log | tee -a $D/summary.txt
for b in pgolf_base pgolf pgolf_ns2; do
  timeout 120 build/$b bench attention --batch 24 --head-dims 64 128 32 > $D/bench_attention_$b.log 2>&1
  echo "$b rc=$?" >> $D/summary.txt
  grep -E "bwd:" $D/bench_attention_$b.log | sed "s/^/$b /" | cut -c1-100 >> $D/summary.txt
done
cat $D/summary.txt
