#!/usr/bin/env bash
# Session 20, call 12: the TMA attention forward with a ring of 3 K/V stages (tile kt + 2 issued
# at tile kt) at 3 blocks an SM (57 KB of shared memory a block), against HEAD's 2 stages at 4
# (.bench/pgolf_s3, tests_s3 against pgolf_head3 = 2895a4c). The attention tests of the variant
# first; then alternating benchmarks.
set -u
D=${OUT:-/tmp/s20call12}; mkdir -p $D
B=.bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
timeout 120 $B/tests_s3 -tc='*ttention*' > $D/tests_s3.log 2>&1; echo "tests rc=$?" >> $D/summary.txt
grep -E "test cases|assertions" $D/tests_s3.log >> $D/summary.txt
for rep in 1 2 3; do for b in head3 s3; do
  echo "== $b rep $rep" >> $D/attn.log
  timeout 60 $B/pgolf_$b bench attention --batch 24 --head-dims 64 >> $D/attn.log 2>&1
done; done
for rep in 1 2; do for b in head3 s3; do
  echo "== $b rep $rep" >> $D/model.log
  timeout 90 $B/pgolf_$b bench model --rows 24 --recur both >> $D/model.log 2>&1
done; done
{ grep -E "^== |RESULT" $D/attn.log; grep -E "^== |^ +24 " $D/model.log; } | tee -a $D/summary.txt
