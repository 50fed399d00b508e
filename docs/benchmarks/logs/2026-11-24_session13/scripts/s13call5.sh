#!/usr/bin/env bash
# Session 13, call 5: two dS slots; P^T taken as rounded for dS^T; dP^T's product after P^T at
# D = 128 (pgolf_late: at every D); three consumer warpgroups at D = 32. Attention tests, bench
# attention, and the model step of HEAD (pgolf_base) and pgolf alternately.
set -u
D=$OUT/c5; mkdir -p $D
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
timeout 300 build/pgolf_tests -tc='*attention*' > $D/tests.log 2>&1; echo "tests rc=$?" | tee -a $D/summary.txt
tail -3 $D/tests.log | tee -a $D/summary.txt
for b in pgolf_base pgolf pgolf_late; do
  timeout 120 build/$b bench attention --batch 24 --head-dims 64 128 32 > $D/bench_attention_$b.log 2>&1
  echo "$b rc=$?" >> $D/summary.txt
  grep -E "bwd:" $D/bench_attention_$b.log | sed "s/^/$b /" | cut -c1-100 >> $D/summary.txt
done
for i in 1 2; do
for b in pgolf_base pgolf; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  timeout 120 build/$b bench model --rows 24 --recur on >> $D/ab_bench_model.log 2>&1
done
done
grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
cat $D/summary.txt
