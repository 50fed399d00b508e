#!/usr/bin/env bash
# Session 20, call 1: pgolf (HEAD, build/pgolf) and the PyTorch baseline at 24 rows (the
# comparison so far) and at 48 rows (98,304 tokens, the record's step per GPU on 8 GPUs), with
# recurrence on and off; PyTorch's kernels of one 24-row step by time (--profile), to set beside
# pgolf's ncu profile of session 19. pgolf's benchmark runs first and last, to bracket the machine.
set -u
D=${OUT:-/tmp/s20call1}; mkdir -p $D
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
timeout 120 build/pgolf bench model --rows 48,24 --recur both > $D/bench_model_1.log 2>&1
timeout 170 python3 scripts/bench_torch_model.py --micro-seqs 24 --batch-tokens 49152 --steps 10 --warmup 4 \
    --profile > $D/torch_24_on.log 2>&1
timeout 110 python3 scripts/bench_torch_model.py --micro-seqs 48 --batch-tokens 98304 --steps 10 --warmup 4 \
    > $D/torch_48_on.log 2>&1
timeout 110 python3 scripts/bench_torch_model.py --micro-seqs 48 --batch-tokens 98304 --steps 10 --warmup 4 \
    --recur off > $D/torch_48_off.log 2>&1
timeout 120 build/pgolf bench model --rows 48,24 --recur both > $D/bench_model_2.log 2>&1
{
  for f in bench_model_1 bench_model_2; do echo "== $f"; grep -E "^ +(24|48) " $D/$f.log; done
  for f in torch_24_on torch_48_on torch_48_off; do echo "== $f"; grep -E "median_step_ms|^RESULT" $D/$f.log; done
} | tee -a $D/summary.txt
