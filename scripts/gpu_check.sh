#!/usr/bin/env bash
# Everything on one GPU machine in one go, for a device call that must check and measure at
# once: the whole test suite (GPU tests included), the model, attention and MLP benchmarks, a short
# record-shaped `pgolf train`, the default run, and, where python3 has torch, the PyTorch
# baseline in the same call (speed; and the loss curve on data/sample_sp8192 when it exists,
# see scripts/sample_vocab.sh). Needs `make build/pgolf build/pgolf_tests` done (build/). Logs go
# to $OUT (or /tmp/gpu_check); the last lines are a table of the RESULT lines and the failures.
# It takes about 15 minutes: through the device tool, start it with setsid nohup and poll.
#   scripts/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
B=build
# `make` alone builds only build/pgolf: a test binary older than it may miss the latest fixes.
if [ "$B/pgolf_tests" -ot "$B/pgolf" ]; then
    echo "gpu_check.sh: $B/pgolf_tests is older than $B/pgolf; run make $B/pgolf $B/pgolf_tests" >&2
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

echo "== test suite"
timeout 600 $B/pgolf_tests >"$OUT/tests.log" 2>&1
grep -B2 -A8 "ERROR" "$OUT/tests.log" | head -80

echo "== benchmarks"
timeout 120 $B/pgolf bench model >"$OUT/bench_model.log" 2>&1
timeout 60 $B/pgolf bench attention >"$OUT/bench_attention.log" 2>&1
timeout 60 $B/pgolf bench mlp >"$OUT/bench_mlp.log" 2>&1
timeout 120 $B/pgolf bench eval --tokens 1048576 >"$OUT/bench_eval.log" 2>&1

echo "== record-shaped training, 30 steps on the sample data"
timeout 200 $B/pgolf train --preset record --vocab-size 1024 --data data/sample --iterations 30 \
    --val-tokens 131072 --log-every 5 --out /tmp/gpu_check_rec >"$OUT/train_record.log" 2>&1
echo "== default run"
timeout 120 $B/pgolf train --out /tmp/gpu_check_tiny --log-every 100 >"$OUT/train_tiny.log" 2>&1

echo "== PyTorch in the same call"
torch_logs=""
if python3 -c "import torch" 2>/dev/null; then
    timeout 200 python3 scripts/bench_torch_model.py --micro-seqs 24 --batch-tokens 49152 --steps 10 --warmup 4 \
        >"$OUT/torch_model.log" 2>&1
    timeout 200 python3 scripts/bench_torch_model.py --micro-seqs 24 --batch-tokens 49152 --steps 10 --warmup 4 \
        --recur off >"$OUT/torch_model_off.log" 2>&1
    torch_logs="torch_model torch_model_off"
    if [ -d data/sample_sp8192 ]; then
        timeout 400 scripts/bench_loss_vs_torch.sh >"$OUT/loss_vs_torch.log" 2>&1
        torch_logs="$torch_logs loss_vs_torch"
    fi
else
    echo "python3 has no torch: no PyTorch baseline"
fi

echo "== summary"
grep -E "test cases|assertions" "$OUT/tests.log"
for f in bench_model bench_attention bench_mlp bench_eval train_record train_tiny $torch_logs; do
    printf '%-16s %s\n' "$f" "$(grep '^RESULT' "$OUT/$f.log" | tail -1 || echo 'no RESULT line (see the log)')"
done
