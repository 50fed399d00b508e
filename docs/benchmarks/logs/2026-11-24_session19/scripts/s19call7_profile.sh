#!/usr/bin/env bash
# Session 19, call 7: a profile of HEAD's step (db21699, = build/; the last whole-step profile was
# session 15's at 54 ms): one step of 24 x 2048 tokens with recurrence under ncu, in its CUDA
# graphs, kernel times and DRAM traffic summed by kernel (scripts/ncu_by_kernel.py), and the
# residual and qkv_prep launches one by one; then the step benchmark without ncu.
set -u
D=$OUT; mkdir -p $D
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
timeout 240 $NCU --profile-from-start off --clock-control none \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --csv \
  build/pgolf bench model --rows 24 --recur on --warmup 2 --reps 1 --profile > /tmp/step.csv 2>&1
echo "ncu rc=$?" > $D/summary.txt
gzip -c /tmp/step.csv > $D/step_ncu_graph.csv.gz
python3 scripts/ncu_by_kernel.py /tmp/step.csv > $D/by_kernel.txt
python3 scripts/ncu_by_kernel.py /tmp/step.csv --launches 'residual|qkv_prep|mlp_gemm|fwd_kernel|bwd_kernel' > $D/launches.txt
cat $D/by_kernel.txt >> $D/summary.txt
timeout 120 build/pgolf bench model --rows 24 --recur both > $D/bench_model.log 2>&1
grep -E "    24" $D/bench_model.log >> $D/summary.txt
cat $D/summary.txt
