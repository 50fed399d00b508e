#!/usr/bin/env bash
# Session 19, call 5: the slab kernel with two epilogue buffers a consumer warpgroup (pgolf_db,
# = build/): the movers get two tiles, not one, to store a tile and bring in (backward) the act
# of the tile after next; the A ring is 4 stages of 128 x 32 to make room. Tests of it; bench mlp
# alternating with pgolf_base (HEAD) and pgolf_slab (call 1); its consumer loop's SASS.
set -u
D=$OUT; B=.bench
timeout 120 build/pgolf_tests -tc='mlp gemm*' > $D/tests_mlp.log 2>&1
echo "tests rc=$?" > $D/summary.txt; tail -2 $D/tests_mlp.log >> $D/summary.txt
grep -B2 -A12 "ERROR" $D/tests_mlp.log | head -30 >> $D/summary.txt
for i in 1 2; do for b in pgolf_base pgolf_slab pgolf_db; do
  echo "== $b run $i" >> $D/bench_mlp.log
  timeout 60 $B/$b bench mlp >> $D/bench_mlp.log 2>&1
done; done
grep -E "^==|RESULT" $D/bench_mlp.log | sed 's/fwd_today_us=[0-9.]* //; s/bwd_today_us=[0-9.]* //; s/device=.*//' >> $D/summary.txt
CUOBJ=$(command -v cuobjdump || echo /usr/local/cuda/bin/cuobjdump)
$CUOBJ -sass $B/pgolf_db | awk '/Function : .*mlp_gemm_kernel/{p=1} p&&/Function : / && !/mlp_gemm_kernel/{p=0} p' | gzip > $D/sass_db_mlp_gemm.txt.gz
echo "sass lines $(zcat $D/sass_db_mlp_gemm.txt.gz | wc -l)" >> $D/summary.txt
cat $D/summary.txt
