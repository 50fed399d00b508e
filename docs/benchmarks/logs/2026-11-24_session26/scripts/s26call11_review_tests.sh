#!/bin/bash
# Session 26 call 11: the kernel and model tests of the review commit (dc9c57c: the forward's
# skip tables filled under one condition), and its step.
set -u
mkdir -p $OUT
timeout 300 build/pgolf_tests -tc='*kernel*,*odel cuda*' > $OUT/tests.log 2>&1
echo "tests: $(tail -2 $OUT/tests.log | head -1)"
grep -B4 -A20 "ERROR:" $OUT/tests.log | head -60
build/pgolf bench model --rows 24 --recur both > $OUT/bench_model.log 2>&1
grep -E '^ +24 ' $OUT/bench_model.log
