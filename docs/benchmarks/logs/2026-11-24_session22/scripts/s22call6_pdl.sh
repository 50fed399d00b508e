#!/bin/bash
# Session 22, call 6: programmatic dependent launch for the model's own kernels (build/pgolf:
# model/pdl.cuh) against the same code without it (.bench/pgolf_lanes5: the optimizer's bank
# streams only), alternating; the kernel, attention, MLP and model tests first.
set -o pipefail
mkdir -p $OUT
build/pgolf_tests -tc='*kernel*,*ttention*,*mlp*,*odel*,*optim*' 2>&1 | tail -5 | tee $OUT/tests.log
for round in 1 2 3; do
  for b in .bench/pgolf_lanes5 build/pgolf; do
    echo "== $b round $round"
    $b bench model --rows 24 --recur both | grep -E "^ +24"
  done
done 2>&1 | tee $OUT/ab_pdl.log
