#!/usr/bin/env bash
# Session 12, call 6: the resume test six times with HEAD's test binary and six with the
# committed code's, alternately; the step-4 state (loss, gnorm) of each run of each case.
set -u
D=$OUT/resume_test_ab; mkdir -p $D
for i in 1 2 3 4 5 6; do
  for b in pgolf_tests_base pgolf_tests; do
    build/$b -tc='train cuda: a stopped and resumed*' > $D/${b}_$i.log 2>&1; rc=$?
    echo "$b $i rc=$rc $(grep -h '^step 4 ' $D/${b}_$i.log | awk '{printf "%s/%s ", $4, $6}')"
  done
done
