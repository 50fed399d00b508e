#!/usr/bin/env bash
# Session 12, call 1: pgolf_k = attention backward with its dQ shares flushed during the next
# step + softcap_ce with a fixed reference (cached probabilities); pgolf adds the weight-gradient
# stream. Tests of the touched parts; bench attention and the softcap kernel; the step of the
# three binaries alternately.
set -u
D=$OUT/c1; mkdir -p $D
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 330 build/pgolf_tests -tc='*attention*,*softcap*,model cuda*' > $D/tests.log 2>&1; echo "tests rc=$?"; tail -3 $D/tests.log
grep -E "ERROR|FAILED" $D/tests.log | head -20
for b in pgolf_base pgolf_k; do
  build/$b bench attention --batch 24 --head-dims 64 128 32 > $D/bench_attention_$b.log 2>&1
  grep -E "bwd:|fwd:" $D/bench_attention_$b.log | sed "s/^/$b /" | cut -c1-90
done
for b in pgolf_base pgolf_k; do
  build/$b bench model --rows 24 --recur on --kernels > $D/kernels_$b.log 2>&1
  grep -i "softcap" $D/kernels_$b.log | sed "s/^/$b /"
done
for i in 1 2; do
for b in pgolf_base pgolf_k pgolf; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  build/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done
done
grep -E "^==|    24" $D/ab_bench_model.log
