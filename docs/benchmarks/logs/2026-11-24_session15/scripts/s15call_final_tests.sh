#!/usr/bin/env bash
# Session 15: the committed code's kernel and model tests (skip_mix_backward's GPU kernel
# removed; the determinism test now runs the fused pass through a skip), and its step.
set -u
D=$OUT/c; mkdir -p $D
B=.bench
timeout 500 $B/pgolf_tests -tc='kernel*,model cuda*' > $D/tests.log 2>&1
echo "tests rc=$?"; tail -3 $D/tests.log; grep -B2 -A8 "ERROR" $D/tests.log | head -30
timeout 120 $B/pgolf_new bench model --rows 24 --recur both > $D/bench_model.log 2>&1; grep -E "    24" $D/bench_model.log
