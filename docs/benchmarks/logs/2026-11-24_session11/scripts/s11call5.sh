#!/usr/bin/env bash
# Session 11, call 5: the ncu step profile of the final binary (skipped with `loss`), and the
# 200-step loss of bench_loss_vs_torch.sh's pgolf run, twice each for HEAD's binary and the new
# one (run-to-run spread of the loss on the same shards).
set -u
D=$OUT/c5; mkdir -p $D
if [ "${1:-}" != loss ]; then
  ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --csv \
    build/pgolf bench model --rows 24 --recur on --warmup 2 --reps 1 --profile > /tmp/step.csv 2>&1
  gzip -c /tmp/step.csv > $D/step_ncu.csv.gz
  scripts/ncu_by_kernel.py /tmp/step.csv > $D/by_kernel.txt
  head -12 $D/by_kernel.txt; tail -1 $D/by_kernel.txt
fi
for i in 1 2; do for b in pgolf_base pgolf; do
  build/$b train --preset record --data data/sample_sp8192 --vocab-size 8192 --batch-tokens 49152 \
    --micro-batch-seqs 24 --iterations 200 --max-wallclock 0 --recur-from 0 --qat-from 1 \
    --log-every 50 --val-every 0 --val-tokens 65536 --out /tmp/loss_${b}_$i > $D/loss_${b}_$i.log 2>&1
  echo "$b run $i: $(grep -E '^step (50|100|150|200) loss' $D/loss_${b}_$i.log | awk '{printf "%s=%s ", $2, $4}')"
done; done
