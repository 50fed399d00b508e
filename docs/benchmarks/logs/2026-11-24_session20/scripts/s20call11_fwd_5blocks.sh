#!/usr/bin/env bash
# Session 20, call 11: with its loads by TMA the attention forward (D = 64) uses 106 registers;
# asked for 5 blocks an SM (launch bounds; 96 registers, 32 bytes spilled; 5 x 42 KB of shared
# memory fit) against HEAD's 4 (.bench/pgolf_m5 against pgolf_head3 = 2895a4c). Alternating.
set -u
D=${OUT:-/tmp/s20call11}; mkdir -p $D
B=.bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
for rep in 1 2 3; do for b in head3 m5; do
  echo "== $b rep $rep" >> $D/attn.log
  timeout 60 $B/pgolf_$b bench attention --batch 24 --head-dims 64 32 >> $D/attn.log 2>&1
done; done
for rep in 1 2; do for b in head3 m5; do
  echo "== $b rep $rep" >> $D/model.log
  timeout 90 $B/pgolf_$b bench model --rows 24 --recur both >> $D/model.log 2>&1
done; done
{ grep -E "^== |RESULT" $D/attn.log; grep -E "^== |^ +24 " $D/model.log; } | tee -a $D/summary.txt
