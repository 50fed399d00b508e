#!/bin/bash
# Session 25 call 8: call 7's build, its kernel, model and train tests again with the whole log
# (call 7 had kept only the summary of a run with 3 failed checks). This run passed.
mkdir -p $OUT; timeout 400 build/pgolf_tests -tc='*kernel*,*odel*,*train*' > $OUT/full.log 2>&1
grep -n -B3 -A25 "ERROR:" $OUT/full.log | head -150
