#!/bin/bash
# Session 27 call 1: does a producer/consumer pair of the forward gain when it runs over row
# chunks, so that the consumer pass reads the product's output from L2? An experiment build
# (.bench/pgolf_chunk) splits, by environment variables, the q|k|v product + qkv_prep, the wo
# product + the second norm, the proj product + the next block's first pass.
set -u
mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
run() {  # label, env...
  local label=$1; shift
  env "$@" .bench/pgolf_chunk bench model --rows 24 --recur on > /tmp/chunk_$label.log 2>&1
  echo "$label: $(grep -E '^ +24 +on' /tmp/chunk_$label.log | awk '{printf "fwd %s bwd %s step %s ms %s", $3, $4, $6, $NF}')"
}
for r in 1 2; do
  run base_$r X=1
  run qkv4_$r PG_CHUNK_QKV=4
  run qkv8_$r PG_CHUNK_QKV=8
  run wo2_$r PG_CHUNK_WO=2
  run wo4_$r PG_CHUNK_WO=4
  run down2_$r PG_CHUNK_DOWN=2
  run down4_$r PG_CHUNK_DOWN=4
done | tee $OUT/chunks.txt
cd /tmp && tar czf $OUT/logs.tgz chunk_*.log
