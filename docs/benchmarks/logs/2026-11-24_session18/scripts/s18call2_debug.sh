#!/usr/bin/env bash
# Session 18, call 2: call 1's build passed every kernel test but gave a NaN loss in the model
# tests with every switch on. Which part: the bf16 load helpers alone (pgolf_tests_u: HEAD's
# kernels with the new raw8/unpack8), and the whole change under compute-sanitizer.
set -u
D=$OUT; B=.bench
T='*every switch on*'
timeout 120 $B/pgolf_tests_u -tc="$T" > $D/helpers_only.log 2>&1; echo "helpers only rc=$?" > $D/summary.txt
tail -3 $D/helpers_only.log >> $D/summary.txt
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
echo "sanitizer: $CS" >> $D/summary.txt
for tool in memcheck initcheck; do
  timeout 200 $CS --tool $tool --print-limit 20 build/pgolf_tests -tc="$T" > $D/$tool.log 2>&1
  echo "$tool rc=$?" >> $D/summary.txt; grep -m12 -E "^=========|ERROR SUMMARY" $D/$tool.log >> $D/summary.txt
done
cat $D/summary.txt
