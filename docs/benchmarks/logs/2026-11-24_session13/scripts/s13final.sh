#!/usr/bin/env bash
# Session 13, final call (in the background: setsid nohup, polled): scripts/gpu_check.sh with the
# final code, then the model step of HEAD's binary (pgolf_base) and the new one alternately.
set -u
F=/tmp/s13final; rm -rf $F; mkdir -p $F
OUT=$F/final_gpu_check scripts/gpu_check.sh > $F/gpu_check.out 2>&1
for i in 1 2 3; do
for b in pgolf_base pgolf; do
  echo "== $b run $i" >> $F/ab_bench_model.log
  timeout 120 build/$b bench model --rows 24 --recur both >> $F/ab_bench_model.log 2>&1
done
done
grep -E "^==|    24" $F/ab_bench_model.log > $F/ab_summary.txt
echo done > $F/DONE
