#!/bin/bash
# Session 22, call 1: two models of half the rows each on their own streams, forward + backward
# at the same time, against one model of all the rows (build/pgolf with
# tried_concurrent_lanes.patch applied: `bench model --lanes`).
set -o pipefail
mkdir -p $OUT
build/pgolf bench model --rows 12,24 --lanes 2 --reps 10 2>&1 | tee $OUT/lanes.log
build/pgolf bench model --rows 12 --lanes 2 --reps 10 2>&1 | grep lanes | tee -a $OUT/lanes.log
