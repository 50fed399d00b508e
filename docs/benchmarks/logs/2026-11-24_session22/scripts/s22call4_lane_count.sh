#!/bin/bash
# Session 22, call 4: the Muon banks on 2, 3 or 5 streams (pgolf_lanesN: model/optim_cuda.cu
# built with -DPG_LANES=N, bank b on lane b % N) against the base (HEAD b098005), alternating.
set -o pipefail
mkdir -p $OUT
for round in 1 2 3; do
  for b in pgolf_base pgolf_lanes2 pgolf_lanes3 pgolf_lanes5; do
    echo "== $b round $round"
    .bench/$b bench model --rows 24 --recur both | grep -E "^ +24"
  done
done 2>&1 | tee $OUT/ab_lanes.log
