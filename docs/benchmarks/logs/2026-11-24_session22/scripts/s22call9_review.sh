#!/bin/bash
# Session 22, call 9: the review's mend (join_muon waits on every bank's event; no pending flags):
# the optimizer, model, train and dist tests, and the step.
set -o pipefail
mkdir -p $OUT
build/pgolf_tests -tc='*optim*,*odel*,*train*,*dist*' 2>&1 | tail -5 | tee $OUT/tests.log
build/pgolf bench model --rows 24 --recur both 2>&1 | tee $OUT/bench_model.log
