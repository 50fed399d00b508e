#!/usr/bin/env bash
# Session 12, call 4: the whole test suite on the H100 with the final code (cuBLASLt candidates
# timed in turns, 16 of them).
set -u
D=$OUT/final_tests; mkdir -p $D
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 560 build/pgolf_tests > $D/tests.log 2>&1; echo "tests rc=$?"; tail -4 $D/tests.log
grep -E "ERROR|FAILED" $D/tests.log | head -20
