#!/usr/bin/env bash
# Session 20, call 4: is the forward's load cost the instructions or the wait? pgolf_nowait
# issues every K/V load but skips the cp.async wait before each tile (a race: timing only).
set -u
D=${OUT:-/tmp/s20call4}; mkdir -p $D
B=.bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
for rep in 1 2 3; do for b in bc64 noload nowait; do
  echo "== $b rep $rep" >> $D/attn.log
  timeout 60 $B/pgolf_$b bench attention --batch 24 --head-dims 64 >> $D/attn.log 2>&1
done; done
grep -E "^== |RESULT" $D/attn.log | tee -a $D/summary.txt
