#!/usr/bin/env bash
# Session 21, call 3: the fused q|k|v projection alone (bench mlp's qkv lines): the working tree
# (build/pgolf) against timing-only builds of model/mlp_gemm.cu without the rotation
# (pgolf_norope), without the store of qkv (pgolf_noraw), without the store of q, k, v (pgolf_noout).
set -u
D=${OUT:-/tmp/s21call3}; mkdir -p $D
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
for rep in 1 2; do for b in build/pgolf .bench/pgolf_norope .bench/pgolf_noraw .bench/pgolf_noout; do
  echo "== $b rep $rep" >> $D/mlp.log
  timeout 60 $b bench mlp >> $D/mlp.log 2>&1
done; done
grep -E "^== |qkv" $D/mlp.log | tee -a $D/summary.txt
