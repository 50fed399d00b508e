#!/usr/bin/env bash
# Session 20, call 8: how much qkv_prep's loads fetched ahead (cp.async, 2-3 a lane and row
# iteration, model/kernels.cu Ahead) cost: pgolf_nofetch issues none (stale shared memory is
# taken instead: timing only) against HEAD (51a8e9e, pgolf_head2). The memory-bound kernels
# alone at the step's shapes (bench model --kernels), twice each, alternating.
set -u
D=${OUT:-/tmp/s20call8}; mkdir -p $D
B=.bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
for rep in 1 2; do for b in head2 nofetch; do
  echo "== $b rep $rep" >> $D/kernels.log
  timeout 120 $B/pgolf_$b bench model --rows 24 --recur on --kernels >> $D/kernels.log 2>&1
done; done
grep -E "^== |qkv_prep" $D/kernels.log | tee -a $D/summary.txt
