#!/usr/bin/env bash
# Session 20, call 10 (call 9 again, after the fix of an over-fetch past N: the rows left were formed in unsigned arithmetic): qkv_prep's loads ahead as whole row blocks by the TMA unit's bulk copies
# (thread 0 of a block, RowsAhead in model/kernels.cu) instead of 2-3 cp.async a lane
# (build/pgolf_tests and .bench/pgolf_rows: the working tree) against HEAD 51a8e9e
# (pgolf_head2). GPU tests of the kernels and the model first; then the memory-bound kernels
# alone (bench model --kernels) and the step, alternating.
set -u
D=${OUT:-/tmp/s20call10}; mkdir -p $D
B=.bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
timeout 300 build/pgolf_tests -tc='*kernel*,*odel*,*qkv*' > $D/tests.log 2>&1; echo "tests rc=$?" >> $D/summary.txt
grep -E "test cases|assertions" $D/tests.log >> $D/summary.txt
for rep in 1 2; do for b in head2 rows; do
  echo "== $b rep $rep" >> $D/kernels.log
  timeout 120 $B/pgolf_$b bench model --rows 24 --recur on --kernels >> $D/kernels.log 2>&1
done; done
for rep in 1 2 3; do for b in head2 rows; do
  echo "== $b rep $rep" >> $D/model.log
  timeout 90 $B/pgolf_$b bench model --rows 24 --recur both >> $D/model.log 2>&1
done; done
{ grep -E "^== |qkv_prep" $D/kernels.log; grep -E "^== |^ +24 " $D/model.log; } | tee -a $D/summary.txt
