#!/bin/bash
# Session 22, call 3: the backward was 0.23 ms slower with the optimizer's five bank streams
# (call 2). Is it the hardware queues (CUDA_DEVICE_MAX_CONNECTIONS, 8 by default) that the
# process's streams share? Both binaries at 8 and at 32 connections, alternating.
set -o pipefail
mkdir -p $OUT
for round in 1 2; do
  for conn in 8 32; do
    for b in .bench/pgolf_base build/pgolf; do
      echo "== $b connections $conn round $round"
      CUDA_DEVICE_MAX_CONNECTIONS=$conn $b bench model --rows 24 --recur both | grep -E "^ +24"
    done
  done
done 2>&1 | tee $OUT/ab_connections.log
