#!/usr/bin/env bash
# Session 13, call 6: consumers arrive on the empty and ds_empty mbarriers one a warp, each after
# its own wait (the final gpu_check's pipeline test caught a stage handed back before every
# warp's product had read it). Attention and pipeline tests, bench attention, the model step of
# HEAD (pgolf_base) and pgolf alternately.
set -u
D=$OUT/c6; mkdir -p $D
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
timeout 400 build/pgolf_tests -tc='*attention*,run:*' > $D/tests.log 2>&1; echo "tests rc=$?" | tee -a $D/summary.txt
tail -3 $D/tests.log | tee -a $D/summary.txt
grep -A3 "ERROR" $D/tests.log | head -20 >> $D/summary.txt
for b in pgolf_base pgolf; do
  timeout 120 build/$b bench attention --batch 24 --head-dims 64 128 32 > $D/bench_attention_$b.log 2>&1
  grep -E "bwd:" $D/bench_attention_$b.log | sed "s/^/$b /" | cut -c1-100 >> $D/summary.txt
done
for i in 1 2; do
for b in pgolf_base pgolf; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  timeout 120 build/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done
done
grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
cat $D/summary.txt
