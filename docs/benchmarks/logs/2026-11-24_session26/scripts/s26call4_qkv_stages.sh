#!/bin/bash
# Session 26 call 4: qkv_prep's kernels at three blocks an SM with 4 or 6 rows fetched ahead
# (their shared memory allowed past 48 KB), against call 3's commit (qkv3): the kernels alone and
# the step; then ncu's full sections of qkv_prep's backward, the x_mid -> u pass and the
# softcap-CE pass in call 3's commit.
set -u
mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
for b in qkv3 qkvS4 qkvS6; do
  .bench/pgolf_$b bench model --rows 24 --recur on --kernels > /tmp/kernels_$b.log 2>&1
  echo "$b: $(grep -E 'qkv_prep' /tmp/kernels_$b.log | tr -s ' ' | tr '\n' ';')"
done | tee $OUT/kernels.txt
for r in 1 2 3; do
  for b in qkv3 qkvS4 qkvS6; do
    .bench/pgolf_$b bench model --rows 24 --recur both > /tmp/bench_${b}_$r.log 2>&1
    echo "$b round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_$r.log | awk '{printf "%s fwd %s bwd %s opt %s step %s ms  ", $2, $3, $4, $5, $6}')"
  done
done | tee $OUT/ab.txt
for k in qkv_prep_backward_kernel residual_forward_kernel softcap_ce_forward_kernel; do
  timeout 100 ncu --profile-from-start off --clock-control none --set full -k "regex:$k" --launch-skip 1 --launch-count 1 \
    .bench/pgolf_qkv3 bench model --rows 24 --recur on --warmup 2 --reps 1 --profile > /tmp/ncu_full_$k.txt 2>&1
done
cd /tmp && tar czf $OUT/logs.tgz bench_*.log kernels_*.log ncu_full_*.txt
