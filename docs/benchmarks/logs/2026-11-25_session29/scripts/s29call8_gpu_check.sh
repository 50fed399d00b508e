#!/bin/bash
# Session 29 calls 8-9: scripts/gpu_check.sh on d755efb, then an ncu profile of the step by
# kernel (the profile of the commit), started detached in call 8 and collected in calls 9-10.
mkdir -p /tmp/gc
(
  OUT=/tmp/gc scripts/gpu_check.sh > /tmp/gc/gpu_check.out 2>&1
  ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
      --csv build/pgolf bench model --rows 24 --recur on --warmup 2 --reps 1 --profile > /tmp/gc/ncu_step.csv 2>&1
  python3 scripts/ncu_by_kernel.py /tmp/gc/ncu_step.csv > /tmp/gc/by_kernel.txt
  echo "== all done" >> /tmp/gc/gpu_check.out
) > /dev/null 2>&1 &
