#!/usr/bin/env bash
# Session 15: after the fix to residual_backward's shared-memory limit (set to what the kernel's
# most slots take, not lowered by a later, smaller launch), one step of the new binary under ncu
# with its CUDA graphs, as call 4 did, and the residual kernel and model tests.
set -u
D=$OUT/c; mkdir -p $D
B=.bench
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
timeout 200 $NCU --profile-from-start off --clock-control none \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --csv \
  $B/pgolf_new bench model --rows 24 --recur on --warmup 2 --reps 1 --profile > /tmp/step.csv 2>&1
echo "ncu rc=$?"; grep -v '^"' /tmp/step.csv | tail -4
gzip -c /tmp/step.csv > $D/step_ncu_graph_pgolf_new.csv.gz
python3 scripts/ncu_by_kernel.py /tmp/step.csv > $D/by_kernel_graph_pgolf_new.txt
head -5 $D/by_kernel_graph_pgolf_new.txt; tail -1 $D/by_kernel_graph_pgolf_new.txt
timeout 300 $B/pgolf_tests -tc='kernel residual*,kernel parameter gradients*,model cuda*' > $D/tests.log 2>&1
echo "tests rc=$?"; tail -3 $D/tests.log
timeout 120 $B/pgolf_new bench model --rows 24 --recur both > $D/bench_model.log 2>&1; grep -E "    24" $D/bench_model.log
