#!/usr/bin/env bash
# Session 20, call 6: call 5's attention benchmark again with the head dims given right
# (D = 64, 32, 128): HEAD's cp.async forward (pgolf_bc64), the TMA forward (pgolf_tma), and the
# no-loads bound of call 3 (pgolf_noload, D = 64 only meaningful). Alternating runs.
set -u
D=${OUT:-/tmp/s20call6}; mkdir -p $D
B=.bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
for rep in 1 2 3; do for b in bc64 tma noload; do
  echo "== $b rep $rep" >> $D/attn.log
  timeout 60 $B/pgolf_$b bench attention --batch 24 --head-dims 64 32 128 >> $D/attn.log 2>&1
done; done
grep -E "^== |RESULT" $D/attn.log | tee -a $D/summary.txt
