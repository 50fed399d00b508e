#!/bin/bash
# Session 26 calls 9-10: the part of gpu_check.sh that call 7's machine did not reach (it went
# back after 30 minutes held, during the PyTorch benchmarks): PyTorch's step without
# recurrence, an ncu profile of the step by kernel, PyTorch's step with recurrence again (same
# machine as the first), and the 200-step loss curves against PyTorch. Started detached (call 9),
# polled (call 10).
set -u
O=/tmp/gc
mkdir -p $O
(
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
  timeout 200 python3 scripts/bench_torch_model.py --micro-seqs 24 --batch-tokens 49152 --steps 10 --warmup 4 \
      --recur off > $O/torch_model_off.log 2>&1
  timeout 200 python3 scripts/bench_torch_model.py --micro-seqs 24 --batch-tokens 49152 --steps 10 --warmup 4 \
      > $O/torch_model.log 2>&1
  timeout 120 build/pgolf bench model > $O/bench_model.log 2>&1
  ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
      --csv build/pgolf bench model --rows 24 --recur on --warmup 2 --reps 1 --profile > $O/ncu_step.csv 2>&1
  python3 scripts/ncu_by_kernel.py $O/ncu_step.csv > $O/by_kernel.txt
  timeout 400 scripts/bench_loss_vs_torch.sh > $O/loss_vs_torch.log 2>&1
  echo "== done"
) > $O/rest.out 2>&1
