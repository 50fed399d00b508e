#!/usr/bin/env bash
# Session 16, call 6: the head's chunk of logits at 64 MiB (HEAD, pgolf_base), 128 MiB (h26)
# and 256 MiB (h27), the step alternating; and one softcap_ce launch of the step under ncu.
set -u
D=$OUT/c; mkdir -p $D
B=.bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
for i in 1 2; do for b in pgolf_base pgolf_h26 pgolf_h27; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  timeout 120 $B/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done; done
grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
timeout 200 ncu --kernel-name-base demangled --kernel-name regex:softcap --launch-skip 30 --launch-count 1 \
  --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
  --section Occupancy --section MemoryWorkloadAnalysis $B/pgolf_base bench model --rows 24 --recur on --warmup 2 --reps 1 \
  > $D/ncu_softcap.txt 2>&1
grep -E "Frequency|Duration|Throughput|Issue|Eligible|Occupancy|Pipe|Stall|Registers" $D/ncu_softcap.txt >> $D/summary.txt
cat $D/summary.txt
