#!/bin/bash
# Session 27 call 14: the review commit (one helper, add_raw8, for the five places that added a
# loaded bf16 chunk into fp32 values): kernel and model tests on the device.
set -u
mkdir -p $OUT
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 400 build/pgolf_tests -tc='*kernel*,*model cuda*' > $OUT/tests.log 2>&1
echo "tests: $(tail -2 $OUT/tests.log | head -1)"
grep -B4 -A20 "ERROR:" $OUT/tests.log | head -40
gzip -9 $OUT/tests.log
