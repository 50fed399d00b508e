#!/usr/bin/env bash
# Session 17, call 8: the PyTorch baseline with its residual stream in bf16, as the records'
# train_gpt.py has it (and pgolf since this session): the step with and without recurrence,
# pgolf's bench model before and after, then the 200-step loss curves on the sample side by side.
set -u
D=$OUT
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader > $D/summary.txt
timeout 120 build/pgolf bench model > $D/bench_model_1.log 2>&1
timeout 200 python3 scripts/bench_torch_model.py --micro-seqs 24 --batch-tokens 49152 --steps 10 --warmup 4 \
    > $D/torch_model.log 2>&1
timeout 200 python3 scripts/bench_torch_model.py --micro-seqs 24 --batch-tokens 49152 --steps 10 --warmup 4 \
    --recur off > $D/torch_model_off.log 2>&1
timeout 120 build/pgolf bench model > $D/bench_model_2.log 2>&1
grep -h -E "^ +24 |RESULT" $D/bench_model_1.log $D/torch_model.log $D/torch_model_off.log $D/bench_model_2.log >> $D/summary.txt
timeout 300 scripts/bench_loss_vs_torch.sh > $D/loss_vs_torch.log 2>&1
tail -1 $D/loss_vs_torch.log >> $D/summary.txt
cat $D/summary.txt
