#!/usr/bin/env bash
# Session 23, call 3: where the attention backward's producer zeroes the next call's dq
# accumulator. pgolf_new: after its last stage, streaming stores (the working tree);
# pgolf_zstart: before its first stage; pgolf_zplain: after its last, plain stores. ncu of one
# step (attention backward launches), then the step alternating with HEAD (pgolf_base).
set -u
mkdir -p $OUT
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
for b in pgolf_new pgolf_zstart pgolf_zplain; do
  timeout 240 $NCU --profile-from-start off --clock-control none -k regex:'bwd_kernel' \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --csv \
    .bench/$b bench model --rows 24 --recur on --warmup 2 --reps 1 --profile > /tmp/$b.csv 2>&1
  python3 scripts/ncu_by_kernel.py /tmp/$b.csv --launches 'bwd_kernel' > $OUT/launches_$b.txt
  echo "== $b: $(awk '{s += $2; n++} END {printf "%d launches, %.1f us", n, s}' $OUT/launches_$b.txt)"
done 2>&1 | tee $OUT/ncu_bwd.log
for round in 1 2 3; do
  for b in pgolf_base pgolf_new pgolf_zstart pgolf_zplain; do
    echo "== $b round $round"
    .bench/$b bench model --rows 24 --recur both | grep -E "^ +24"
  done
done 2>&1 | tee $OUT/ab_step.log
