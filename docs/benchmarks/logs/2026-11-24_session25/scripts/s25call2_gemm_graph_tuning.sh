#!/bin/bash
# Session 25 call 2: cuBLASLt's candidates timed as CUDA graphs (the memset some kernels bring
# costs ~7 us between graph nodes). Tests of the GEMM and model, the step alternating HEAD's
# binary and this one, then the new step's nsys timeline.
set -u
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout 300 build/pgolf_tests -tc='*gemm*,*odel*,*optim*' 2>&1 | tail -4 > $OUT/tests.log
cat $OUT/tests.log
for r in 1 2 3; do
  for b in head gemmgraph; do
    .bench/pgolf_$b bench model --rows 24 --recur both > /tmp/bench_${b}_$r.log 2>&1
    echo "$b round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_$r.log | awk '{printf "%s fwd %s bwd %s opt %s step %s ms  ", $2, $3, $4, $5, $6}')"
  done
done | tee $OUT/ab.txt
NSYS=/opt/nvidia/nsight-compute/2025.3.1/host/target-linux-x64/nsys
for b in head gemmgraph; do
  $NSYS profile --capture-range=cudaProfilerApi --cuda-graph-trace=node --trace=cuda -o /tmp/step_$b -f true \
      .bench/pgolf_$b bench model --rows 24 --recur on --warmup 3 --reps 2 --profile > /tmp/nsys_run_$b.log 2>&1
  [ -f /tmp/step_$b.nsys-rep ] || LD_LIBRARY_PATH=$PWD/.bench/libs $(dirname $NSYS)/../linux-desktop-glibc_2_11_3-x64/QdstrmImporter -i /tmp/step_$b.qdstrm >> /tmp/nsys_run_$b.log 2>&1
  $NSYS stats --report cuda_gpu_trace --format csv --output /tmp/trace_$b /tmp/step_$b.nsys-rep > /tmp/nsys_stats_$b.log 2>&1
  gzip -c /tmp/trace_${b}_cuda_gpu_trace.csv > $OUT/trace_$b.csv.gz
  python3 scripts/nsys_timeline.py $OUT/trace_$b.csv.gz > $OUT/timeline_$b.txt
  echo "$b: $(head -3 $OUT/timeline_$b.txt | tr '\n' ' ')"
  echo "$b memsets: $(zcat $OUT/trace_$b.csv.gz | grep -c 'CUDA memset')"
done
cd /tmp && tar czf $OUT/logs.tgz bench_*.log nsys_run_*.log nsys_stats_*.log
