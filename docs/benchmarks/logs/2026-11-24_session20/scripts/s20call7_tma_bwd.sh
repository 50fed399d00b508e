#!/usr/bin/env bash
# Session 20, call 7: the attention backward's producer with Q, dO (and K, V) brought by the TMA
# unit as well (build/pgolf_tests and .bench/pgolf_tma2: the working tree), against call 6's
# forward-only TMA build (pgolf_tma) and HEAD's kernels (pgolf_bc64). GPU tests of attention and
# the model first; then alternating benchmarks.
set -u
D=${OUT:-/tmp/s20call7}; mkdir -p $D
B=.bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
timeout 300 build/pgolf_tests -tc='*ttention*,*odel*' > $D/tests.log 2>&1; echo "tests rc=$?" >> $D/summary.txt
grep -E "test cases|assertions" $D/tests.log >> $D/summary.txt
for rep in 1 2 3; do for b in bc64 tma tma2; do
  echo "== $b rep $rep" >> $D/attn.log
  timeout 60 $B/pgolf_$b bench attention --batch 24 --head-dims 64 32 128 >> $D/attn.log 2>&1
done; done
for rep in 1 2 3; do for b in bc64 tma2; do
  echo "== $b rep $rep" >> $D/model.log
  timeout 90 $B/pgolf_$b bench model --rows 24 --recur both >> $D/model.log 2>&1
done; done
{ grep -E "^== |RESULT" $D/attn.log; grep -E "^== |^ +24 " $D/model.log; } | tee -a $D/summary.txt
