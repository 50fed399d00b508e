#!/usr/bin/env bash
# Session 15: one step of HEAD's binary (pgolf_base) and the new one under ncu (time and DRAM
# bytes per kernel), to see where the fused residual passes stand inside the step. Eager
# launches: at the time, ncu's graph replay of the new binary stopped at its first fused skip
# pass with LaunchFailed (a shared-memory limit lowered after capture; fixed later, see README).
set -u
D=$OUT/c; mkdir -p $D
B=.bench
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
for b in pgolf_base pgolf_new; do
  timeout 200 $NCU --profile-from-start off --clock-control none \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --csv \
    $B/$b bench model --rows 24 --recur on --warmup 2 --reps 1 --profile --eager > /tmp/step_$b.csv 2>&1
  gzip -c /tmp/step_$b.csv > $D/step_ncu_$b.csv.gz
  python3 scripts/ncu_by_kernel.py /tmp/step_$b.csv > $D/by_kernel_$b.txt
  echo "== $b"; head -12 $D/by_kernel_$b.txt; tail -1 $D/by_kernel_$b.txt
done
