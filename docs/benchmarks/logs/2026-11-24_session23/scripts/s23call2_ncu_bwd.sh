#!/usr/bin/env bash
# Session 23, call 2: where call 1's backward gain went. One step of 24 x 2048 tokens with
# recurrence under ncu, in its CUDA graphs, for HEAD (pgolf_base) and the working tree
# (pgolf_new): the attention and XSA backward kernels launch by launch, and every kernel summed.
set -u
mkdir -p $OUT
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
for b in pgolf_base pgolf_new; do
  timeout 240 $NCU --profile-from-start off --clock-control none \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --csv \
    .bench/$b bench model --rows 24 --recur on --warmup 2 --reps 1 --profile > /tmp/$b.csv 2>&1
  echo "== $b ncu rc=$?"
  gzip -c /tmp/$b.csv > $OUT/step_$b.csv.gz
  python3 scripts/ncu_by_kernel.py /tmp/$b.csv > $OUT/by_kernel_$b.txt
  python3 scripts/ncu_by_kernel.py /tmp/$b.csv --launches 'bwd_|xsa_back|memset' > $OUT/launches_$b.txt
done
for b in pgolf_base pgolf_new; do echo "== $b"; head -14 $OUT/by_kernel_$b.txt; tail -1 $OUT/by_kernel_$b.txt; done
