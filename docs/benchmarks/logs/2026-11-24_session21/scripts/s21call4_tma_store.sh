#!/usr/bin/env bash
# Session 21, call 4: the fused q|k|v projection's stores by the TMA unit (one mover thread:
# whole 64-column slots, and v_first brought in the same way) in place of 96 movers' 16-byte
# stores: the working tree (build/pgolf) against call 2's build (.bench/pgolf_movers), and
# .bench/pgolf_tmaup, the working tree with the MLP up-forward's act stored the same way.
set -u
D=${OUT:-/tmp/s21call4}; mkdir -p $D
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
timeout 200 build/pgolf_tests -tc='*gemm*,*odel*' > $D/tests.log 2>&1; echo "tests rc=$?" >> $D/summary.txt
grep -E "test cases|assertions|record shape" $D/tests.log >> $D/summary.txt
timeout 150 compute-sanitizer --tool memcheck build/pgolf_tests -tc='qkv gemm cuda: the fused*' > $D/memcheck.log 2>&1
echo "memcheck rc=$?" >> $D/summary.txt; grep -E "ERROR SUMMARY|test cases" $D/memcheck.log >> $D/summary.txt
for rep in 1 2; do for b in .bench/pgolf_movers build/pgolf .bench/pgolf_tmaup; do
  echo "== $b rep $rep" >> $D/mlp.log
  timeout 60 $b bench mlp >> $D/mlp.log 2>&1
done; done
run() {  # name, binary, env...
  local n=$1 b=$2; shift 2
  echo "== $n" >> $D/model.log
  env "$@" timeout 90 $b bench model --rows 24 --recur both >> $D/model.log 2>&1
}
for rep in 1 2; do
  run base build/pgolf PG_NOQKV=1 PG_NOSIDE=1
  run qkv_tma build/pgolf PG_NOSIDE=1
  run qkv_tma_up .bench/pgolf_tmaup PG_NOSIDE=1
done
{ grep -E "^== |us " $D/mlp.log; grep -E "^== |^ +24 " $D/model.log; } | tee -a $D/summary.txt
