#!/usr/bin/env bash
# Session 20, call 2: the attention forward with 128-key tiles (cuDNN's fprop, which PyTorch ran
# in call 1 at 3.45 ms a step against our 3.86, uses 64 x 128 x 64 tiles with one warpgroup).
# .bench/pgolf_bc64: HEAD's kernel (the same source built the same way as the variants);
# pgolf_bc128: kFwdBc = 128 at 4 blocks an SM asked (spills 148 bytes); pgolf_bc128m3: 128-key
# tiles, 3 blocks an SM asked (no spills; 72 KB of shared memory allow 3). Alternating runs.
set -u
D=${OUT:-/tmp/s20call2}; mkdir -p $D
B=.bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
timeout 120 $B/tests_bc128m3 -tc='*ttention*' > $D/tests_bc128m3.log 2>&1; echo "tests rc=$?" >> $D/summary.txt
tail -3 $D/tests_bc128m3.log >> $D/summary.txt
for rep in 1 2; do for b in bc64 bc128m3 bc128; do
  echo "== $b rep $rep" >> $D/attn.log
  timeout 60 $B/pgolf_$b bench attention --batch 24 --head-dims 64 >> $D/attn.log 2>&1
done; done
for rep in 1 2 3; do for b in bc64 bc128m3; do
  echo "== $b rep $rep" >> $D/model.log
  timeout 90 $B/pgolf_$b bench model --rows 24 --recur both >> $D/model.log 2>&1
done; done
{ grep -E "^== |RESULT" $D/attn.log; grep -E "^== |^ +24 " $D/model.log; } | tee -a $D/summary.txt
