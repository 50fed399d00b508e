#!/usr/bin/env bash
# Session 12, call 10: the whole suite with the committed code (d093cb6: cuBLASLt candidates in
# turns; the resume test's floors), after the fc^T variant was dropped.
set -u
D=$OUT/final_tests_committed; mkdir -p $D
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 330 build/pgolf_tests > $D/tests.log 2>&1; echo "tests rc=$?"; tail -3 $D/tests.log
grep -E "ERROR|FAILED" $D/tests.log | head -20
grep -h "gpu resume vs straight" $D/tests.log | sed 's/.*MESSAGE: //'
