#!/usr/bin/env bash
# Session 11, call 1: the fused MLP keeps act and f's signs in place of f (forward stores
# 68 KB a tile instead of 128 KB, two epilogue buffers). MLP and model tests; bench mlp and the
# step against HEAD (pgolf_base), alternating; ncu sections of the two fused kernels.
set -u
D=$OUT/c1; mkdir -p $D
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 300 build/pgolf_tests -tc='mlp gemm*,model cuda*' > $D/tests.log 2>&1; tail -3 $D/tests.log
grep -E "ERROR|FAILED" $D/tests.log | head -20
for b in pgolf_base pgolf; do build/$b bench mlp > $D/bench_mlp_$b.log 2>&1; done
paste <(grep -E "us " $D/bench_mlp_pgolf_base.log) <(grep -E "us " $D/bench_mlp_pgolf.log | cut -c35-)
for i in 1 2; do
for b in pgolf_base pgolf; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  build/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done
done
grep -E "^==|    24" $D/ab_bench_model.log
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
S="--section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section Occupancy"
timeout 100 $NCU $S -k regex:mlp_gemm --launch-skip 2 --launch-count 1 build/pgolf bench mlp --warmup 2 --reps 3 > $D/ncu_mlp_up.txt 2>&1
timeout 100 $NCU $S -k regex:mlp_gemm --launch-skip 7 --launch-count 1 build/pgolf bench mlp --warmup 2 --reps 3 > $D/ncu_mlp_down.txt 2>&1
for f in up down; do echo "-- $f"; grep -E "Duration|DRAM Throughput|L2 Cache Throughput|Compute \(SM\)|Warp Cycles Per Issued|Issued Warp" $D/ncu_mlp_$f.txt; done
