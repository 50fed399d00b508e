#!/bin/bash
# Session 26 call 1: session 25's held-back change (the wo product adds into a stored x_in),
# merged onto 29d3550. The model's gradient cases 13 times with fresh seeds (the MESSAGE line of
# every compare: worst gradient error and its tensor), the kernel tests once, the step
# alternating HEAD's binary (base26) and this one, then ncu's full sections of the slowest
# residual backward pass and qkv_prep's backward in HEAD's binary.
set -u
mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout 150 build/pgolf_tests -tc='*kernel*' > $OUT/kernel_tests.log 2>&1
echo "kernel tests: $(tail -2 $OUT/kernel_tests.log | head -1)"
start=$(date +%s)
for r in $(seq 1 13); do
  timeout 60 build/pgolf_tests -tc='*every gradient match*' > /tmp/g$r.log 2>&1
  echo "run $r: $(grep -c 'ERROR:' /tmp/g$r.log) errors; $(grep -o 'worst gradient rel L2 [^;]*' /tmp/g$r.log | tr '\n' ';')"
  grep -B4 -A20 "ERROR:" /tmp/g$r.log | head -60 >> $OUT/grad_errors.log
  cat /tmp/g$r.log >> $OUT/grad_runs.log
  [ $(( $(date +%s) - start )) -gt 240 ] && break
done | tee $OUT/grads.txt
for r in 1 2 3; do
  for b in base26 woadd26; do
    .bench/pgolf_$b bench model --rows 24 --recur both > /tmp/bench_${b}_$r.log 2>&1
    echo "$b round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_$r.log | awk '{printf "%s fwd %s bwd %s opt %s step %s ms  ", $2, $3, $4, $5, $6}')"
  done
done | tee $OUT/ab.txt
for k in "residual_backward_kernel<2, true, true>" "qkv_prep_backward_kernel"; do
  timeout 100 ncu --profile-from-start off --clock-control none --set full -k "regex:${k%%<*}" --launch-skip 1 --launch-count 1 \
    .bench/pgolf_base26 bench model --rows 24 --recur on --warmup 2 --reps 1 --profile > /tmp/ncu_full_${k%%<*}.txt 2>&1
done
cd /tmp && tar czf $OUT/logs.tgz bench_*.log ncu_full_*.txt
