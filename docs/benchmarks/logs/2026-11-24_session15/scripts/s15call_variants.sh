#!/usr/bin/env bash
# Session 15: five builds of the residual backward kernel (see the README), timed alone
# (bench model --kernels) and in the step, HEAD's binary (pgolf_base) first. Run from the
# repo root with the binaries in .bench/.
set -u
D=$OUT/c; mkdir -p $D
B=.bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
for b in pgolf_base pgolf_v1 pgolf_v2 pgolf_v3 pgolf_v4 pgolf_v5; do
  timeout 120 $B/$b bench model --rows 24 --recur on --kernels > $D/kernels_$b.log 2>&1
  echo "== $b" >> $D/summary.txt
  grep -E "residual_backward|skip_mix|    24" $D/kernels_$b.log >> $D/summary.txt
done
cat $D/summary.txt
