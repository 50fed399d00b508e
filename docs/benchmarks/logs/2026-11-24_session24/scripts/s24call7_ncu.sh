#!/bin/bash
# Session 24 call 7: ncu of one step (24 rows, recurrence on) of session 23's HEAD (base) and of
# this session's last commit (final), summed by kernel; and the two binaries' steps alternating.
set -u
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
for b in base final; do
  ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --csv .bench/pgolf_$b bench model --rows 24 --recur on --warmup 2 --reps 1 --profile > /tmp/step_$b.csv 2>&1
  python3 scripts/ncu_by_kernel.py /tmp/step_$b.csv > $OUT/by_kernel_$b.txt
  gzip -c /tmp/step_$b.csv > $OUT/step_$b.csv.gz
  echo "== $b"; cat $OUT/by_kernel_$b.txt
done
for r in 1 2 3; do
  for b in base final; do
    .bench/pgolf_$b bench model --rows 24 --recur both > /tmp/bench_${b}_$r.log 2>&1
    echo "$b round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_$r.log | awk '{printf "%s %s ms (%s GiB)  ", $2, $6, $10}')"
  done
done | tee $OUT/ab.txt
cd /tmp && tar czf $OUT/bench_logs.tgz bench_*.log
