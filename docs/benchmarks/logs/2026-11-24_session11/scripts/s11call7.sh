#!/usr/bin/env bash
# Session 11, call 7: the backward's act brought in by TMA (one mover issues four boxes a
# tile, after a barrier of the movers) instead of the movers' cp.async. MLP tests; bench mlp
# against HEAD's binary, twice each.
set -u
D=$OUT/c7; mkdir -p $D
timeout 300 build/pgolf_tests -tc='mlp gemm*' > $D/tests.log 2>&1; tail -3 $D/tests.log
grep -E "ERROR|FAILED" $D/tests.log | head -20
for i in 1 2; do for b in pgolf_base pgolf; do build/$b bench mlp > $D/bench_mlp_${b}_$i.log 2>&1; done; done
paste <(grep -E "us " $D/bench_mlp_pgolf_base_1.log) <(grep -E "us " $D/bench_mlp_pgolf_1.log | cut -c35-) <(grep -E "us " $D/bench_mlp_pgolf_base_2.log | cut -c35-) <(grep -E "us " $D/bench_mlp_pgolf_2.log | cut -c35-)
