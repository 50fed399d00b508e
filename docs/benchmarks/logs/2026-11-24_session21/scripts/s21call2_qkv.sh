#!/usr/bin/env bash
# Session 21, call 2: the q|k|v projection with qkv_prep_forward as its epilogue (the working
# tree; PG_NOQKV=1 runs cuBLAS + the qkv_prep_forward kernel as before), beside call 1's side
# stream (PG_NOSIDE=1 turns it off). GPU tests of the fused products, kernels and model, the
# oracle case under compute-sanitizer; then alternating benchmarks.
set -u
D=${OUT:-/tmp/s21call2}; mkdir -p $D
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
timeout 200 build/pgolf_tests -tc='*gemm*,*odel*' > $D/tests.log 2>&1; echo "tests rc=$?" >> $D/summary.txt
grep -E "test cases|assertions|record shape" $D/tests.log >> $D/summary.txt
timeout 150 compute-sanitizer --tool memcheck build/pgolf_tests -tc='qkv gemm cuda: the fused*' > $D/memcheck.log 2>&1
echo "memcheck rc=$?" >> $D/summary.txt; grep -E "ERROR SUMMARY|test cases" $D/memcheck.log >> $D/summary.txt
run() {  # name, env...
  local n=$1; shift
  echo "== $n" >> $D/model.log
  env "$@" timeout 90 build/pgolf bench model --rows 24 --recur both >> $D/model.log 2>&1
}
for rep in 1 2 3; do
  run base PG_NOQKV=1 PG_NOSIDE=1
  run qkv PG_NOSIDE=1
  run qkv_side100 PG_SIDE_SMS=100
done
grep -E "^== |^ +24 " $D/model.log | tee -a $D/summary.txt
