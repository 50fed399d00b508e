#!/bin/bash
# Session 29 call 1: the fused MLP kernels with part of each tile's epilogue run under the next
# tile's products (d8: the last 8 of 32 accumulator n-blocks; d16: 16, which spills a little).
# MLP and model tests of d8 (build/); bench mlp and the step against session 28's HEAD (base29),
# alternating, three rounds; the SASS of the kernels if the device has cuobjdump.
set -u
mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
if command -v cuobjdump >/dev/null; then
  cuobjdump -sass .bench/pgolf_d8 2>/dev/null | awk '/Function : .*mlp_gemm_kernel/{p=1} /Function : /&&!/mlp_gemm_kernel/{p=0} p' | gzip -9 > $OUT/sass_d8.txt.gz
  echo "sass lines: $(zcat $OUT/sass_d8.txt.gz | wc -l)"
else
  echo "no cuobjdump: $(ls /usr/local/cuda*/bin 2>/dev/null | tr '\n' ' ' | head -c 300)"
fi
timeout 300 build/pgolf_tests -tc='*mlp*,*model cuda*' > $OUT/tests.log 2>&1
echo "tests: $(tail -2 $OUT/tests.log | head -1)"
grep -B4 -A20 "ERROR:" $OUT/tests.log | head -40
for r in 1 2 3; do
  for b in base29 d8 d16; do
    .bench/pgolf_$b bench mlp > /tmp/mlp_${b}_$r.log 2>&1
    echo "$b round $r: $(grep -iE 'fused|cublas' /tmp/mlp_${b}_$r.log | tr -s ' ' | tr '\n' ';')"
  done
done | tee $OUT/mlp.txt
for r in 1 2 3; do
  for b in base29 d8 d16; do
    .bench/pgolf_$b bench model --rows 24 --recur on > /tmp/bench_${b}_$r.log 2>&1
    echo "$b round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_$r.log | awk '{printf "%s fwd %s bwd %s opt %s step %s ms  ", $2, $3, $4, $5, $6}')"
  done
done | tee $OUT/ab.txt
cd /tmp && tar czf $OUT/logs.tgz bench_*.log mlp_*.log
gzip -9 $OUT/tests.log
