#!/bin/bash
# Session 23, call 4: the review's mend after the final check (the dq slot is checked in one
# place, flash_attention_dq_accumulator, which the backward now calls). Attention, XSA, model
# and train tests on the commit's build, and the step.
set -o pipefail
mkdir -p $OUT
build/pgolf_tests -tc='*attention*,*xsa*,*odel*,*train*' 2>&1 | tail -4 | tee $OUT/tests.log
build/pgolf bench model --rows 24 --recur both 2>&1 | grep -E "^ +24|RESULT" | tee $OUT/bench_model.log
