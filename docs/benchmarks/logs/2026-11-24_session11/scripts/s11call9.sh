#!/usr/bin/env bash
# Session 11, call 9, on nvidia-h200-x2: the first multi-GPU run. The dist tests (the forked
# two-rank Parallel Muon test runs only with 2 GPUs); then the record-shaped model, 100 steps of
# the same 196,608-token global batch on the sample shards, on 1 GPU and on 2 GPUs: the loss
# curves side by side and the tokens/s.
set -u
D=$OUT/c9; mkdir -p $D
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader; nvidia-smi topo -m | head -4
timeout 240 build/pgolf_tests -tc='dist*' > $D/tests_dist.log 2>&1; tail -3 $D/tests_dist.log
grep -E "ERROR|FAILED|skipped:" $D/tests_dist.log | head -10
for g in 1 2; do
  timeout 200 build/pgolf train --preset record --data data/sample_sp8192 --vocab-size 8192 --gpus $g \
    --batch-tokens 196608 --micro-batch-seqs 24 --iterations 100 --max-wallclock 0 --recur-from 0 --qat-from 1 \
    --log-every 10 --val-every 0 --val-tokens 65536 --out /tmp/dp$g > $D/train_gpus$g.log 2>&1
  echo "gpus $g rc=$? $(grep -E '^RESULT' $D/train_gpus$g.log)"
done
paste <(grep -E '^step [0-9]+ loss' $D/train_gpus1.log | awk '{print $2, $4}') \
      <(grep -E '^step [0-9]+ loss' $D/train_gpus2.log | awk '{print $4, $0}' | awk '{print $1}') | column -t
grep -iE "error|warn" $D/train_gpus2.log | head -5
