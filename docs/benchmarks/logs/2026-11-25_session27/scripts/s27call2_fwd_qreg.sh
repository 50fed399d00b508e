#!/bin/bash
# Session 27 call 2: the attention forward with Q as the scores' A operand from registers
# (qreg), and that plus FlashAttention-3's overlap inside the warpgroup (pipe: tile kt's S
# product, then tile kt - 1's PV product under tile kt's softmax). Attention tests of both
# builds; bench attention (B = 24, D = 64) and the step, alternating with HEAD (base27).
set -u
mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
for b in qreg pipe; do
  timeout 120 .bench/pgolf_tests_$b -tc='*flash attention*' > $OUT/tests_$b.log 2>&1
  echo "tests $b: $(tail -2 $OUT/tests_$b.log | head -1)"
  grep -B4 -A20 "ERROR:" $OUT/tests_$b.log | head -40
done
for r in 1 2 3; do
  for b in base27 qreg pipe; do
    .bench/pgolf_$b bench attention --batch 24 --head-dims 64 > /tmp/attn_${b}_$r.log 2>&1
    echo "$b round $r: $(grep RESULT /tmp/attn_${b}_$r.log)"
  done
done | tee $OUT/attn.txt
for r in 1 2; do
  for b in base27 qreg pipe; do
    .bench/pgolf_$b bench model --rows 24 --recur on > /tmp/bench_${b}_$r.log 2>&1
    echo "$b round $r: $(grep -E '^ +24 +on' /tmp/bench_${b}_$r.log | awk '{printf "fwd %s bwd %s step %s ms", $3, $4, $6}')"
  done
done | tee $OUT/ab.txt
cd /tmp && tar czf $OUT/logs.tgz attn_*.log bench_*.log
