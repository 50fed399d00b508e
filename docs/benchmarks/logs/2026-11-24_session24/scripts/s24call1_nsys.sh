#!/bin/bash
# Session 24 call 1: the step's real timeline (nsys, graph nodes traced), to see what the side
# stream's weight gradients overlap and where the main stream waits.
set -u
NSYS=$(which nsys 2>/dev/null || find / -name nsys -type f 2>/dev/null | head -1)
echo "nsys: $NSYS"; $NSYS --version
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
#build/pgolf bench model --rows 24 --recur on --warmup 3 --reps 10 | tee $OUT/bench_model.log
$NSYS profile --capture-range=cudaProfilerApi --cuda-graph-trace=node --trace=cuda -o /tmp/step -f true \
    build/pgolf bench model --rows 24 --recur on --warmup 3 --reps 2 --profile > $OUT/nsys_run.log 2>&1
# The nsys that comes with Nsight Compute leaves a .qdstrm; its importer makes the report. It
# needs libdw, which the device lacks: .bench/libs holds this machine's (Debian's) copy.
[ -f /tmp/step.nsys-rep ] || LD_LIBRARY_PATH=$PWD/.bench/libs $(dirname $NSYS)/../linux-desktop-glibc_2_11_3-x64/QdstrmImporter -i /tmp/step.qdstrm >> $OUT/nsys_run.log 2>&1
$NSYS stats --report cuda_gpu_trace --format csv --output /tmp/trace /tmp/step.nsys-rep > $OUT/nsys_stats.log 2>&1
ls -la /tmp/trace* >> $OUT/nsys_stats.log
gzip -c /tmp/trace_cuda_gpu_trace.csv > $OUT/trace.csv.gz
python3 scripts/nsys_timeline.py $OUT/trace.csv.gz | tee $OUT/timeline.txt
