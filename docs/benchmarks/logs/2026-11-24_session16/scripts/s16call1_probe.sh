#!/usr/bin/env bash
# Session 16, call 1: (a) the gaps between kernels in a graph step (nsys, when the device has
# it): the most that launching kernels earlier could save; (b) the head's chunk of logits at
# 64 MiB (HEAD), 32 MiB (h24) and 16 MiB (h23), the step alternating. Binaries in .bench/.
set -u
D=$OUT/c; mkdir -p $D
B=.bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
echo "nsys: ${NSYS:-none}" | tee -a $D/summary.txt
if [ -n "$NSYS" ]; then
  timeout 200 $NSYS profile --cuda-graph-trace=node -t cuda -o /tmp/step -f true \
    $B/pgolf_base bench model --rows 24 --recur on --warmup 2 --reps 2 > $D/nsys_run.log 2>&1
  timeout 200 $NSYS stats --report cuda_gpu_trace --format csv -o /tmp/trace /tmp/step.nsys-rep > /dev/null 2>&1
  ls /tmp/trace* >> $D/summary.txt 2>&1
  python3 docs/benchmarks/logs/2026-11-24_session16/scripts/gaps.py /tmp/trace*.csv | tee -a $D/summary.txt
  gzip -c /tmp/trace*.csv > $D/gpu_trace.csv.gz
fi
for i in 1 2; do for b in pgolf_base pgolf_h24 pgolf_h23; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  timeout 120 $B/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done; done
grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
cat $D/summary.txt
