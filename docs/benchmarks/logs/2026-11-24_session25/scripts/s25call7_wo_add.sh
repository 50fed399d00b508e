#!/bin/bash
# Session 25 call 7: the wo product adds its branch into x_in (stored by the pass before it) in its
# epilogue, every block: a and m are never stored, the passes read one tensor of the stream. Kernel,
# model and train tests; the step alternating call 6's binary (projadd, committed) and this one;
# then ncu of the memory-bound passes of both.
set -u
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout 400 build/pgolf_tests -tc='*kernel*,*odel*,*train*' 2>&1 | tail -4 > $OUT/tests.log
cat $OUT/tests.log
for r in 1 2 3; do
  for b in projadd woadd; do
    .bench/pgolf_$b bench model --rows 24 --recur both > /tmp/bench_${b}_$r.log 2>&1
    echo "$b round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_$r.log | awk '{printf "%s fwd %s bwd %s opt %s step %s ms  ", $2, $3, $4, $5, $6}')"
  done
done | tee $OUT/ab.txt
for b in projadd woadd; do
  ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --csv .bench/pgolf_$b bench model --rows 24 --recur on --warmup 2 --reps 1 --profile > /tmp/ncu_$b.csv 2>&1
  python3 scripts/ncu_by_kernel.py /tmp/ncu_$b.csv > $OUT/by_kernel_$b.txt
  echo "$b: $(tail -1 $OUT/by_kernel_$b.txt)  $(grep -E 'residual_forward|nvjet' $OUT/by_kernel_$b.txt | tr -s ' ' | tr '\n' ';')"
done
cd /tmp && tar czf $OUT/logs.tgz bench_*.log ncu_*.csv
