#!/usr/bin/env bash
# pgolf against PyTorch on the same text: the record-shaped model trained STEPS steps of
# BATCH tokens on the shards of DATA (default: the embedded sample at vocab 8192, made by
# scripts/sample_vocab.sh), once by `pgolf train` and once by scripts/bench_torch_model.py
# (the same architecture in PyTorch), both reading the train shards in the same order with the
# same optimizer settings and LR schedule. Recurrence is on from the first step and QAT off in
# both, as the PyTorch model has no phases. Prints the two loss curves side by side, then
#   RESULT steps=... pgolf_loss=... pytorch_loss=... pgolf_tokens_per_s=... pytorch_tokens_per_s=... device=...
# (tokens/s: median step time; pgolf's from its step lines after the first, PyTorch's after
# its 5 compile steps). Needs a GPU, `make`, and python3 with torch. On a GPU machine:
#   scripts/bench_loss_vs_torch.sh                    # STEPS=200 BATCH=49152 LOG=10
set -euo pipefail
DATA=${DATA:-data/sample_sp8192}
VOCAB=${VOCAB:-8192}
STEPS=${STEPS:-200}
BATCH=${BATCH:-49152}
LOG=${LOG:-10}
PGOLF=${PGOLF:-build/pgolf}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$PGOLF" train --preset record --data "$DATA" --vocab-size "$VOCAB" --batch-tokens "$BATCH" \
    --micro-batch-seqs $((BATCH / 2048)) --iterations "$STEPS" --max-wallclock 0 --recur-from 0 --qat-from 1 \
    --log-every "$LOG" --val-every 0 --val-tokens 65536 --out "$work/pgolf" >"$work/pgolf.log" 2>&1 ||
    { cat "$work/pgolf.log" >&2; exit 1; }
python3 "$(dirname "$0")/bench_torch_model.py" --data "$DATA" --vocab "$VOCAB" --batch-tokens "$BATCH" \
    --micro-seqs $((BATCH / 2048)) --warmup 5 --steps $((STEPS - 5)) --log-every "$LOG" >"$work/torch.log" 2>&1 ||
    { cat "$work/torch.log" >&2; exit 1; }

# Step lines: pgolf "step N loss X ... step_ms T ...", PyTorch "step N loss X".
pgolf_ms=$(awk '/^step [0-9]+ loss / && $2 > 1 { for (i = 5; i < NF; i++) if ($i == "step_ms") print $(i + 1) }' \
    "$work/pgolf.log" | sort -g | awk '{ v[NR] = $1 } END { print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
awk -v batch="$BATCH" -v ms="$pgolf_ms" '
    FNR == 1 { file++ }
    file == 1 && /^step [0-9]+ loss / { loss1[$2] = $4 }
    file == 2 && /^step [0-9]+ loss / { loss2[$2] = $4; steps[++m] = $2 }
    file == 2 && /^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); r[kv[1]] = kv[2] } }
    END {
        printf "%6s %12s %12s\n", "step", "pgolf", "pytorch"
        for (j = 1; j <= m; j++) printf "%6d %12s %12s\n", steps[j], loss1[steps[j]], loss2[steps[j]]
        last = steps[m]
        printf "RESULT steps=%d pgolf_loss=%s pytorch_loss=%s pgolf_tokens_per_s=%.0f pytorch_tokens_per_s=%s device=%s\n",
            last, loss1[last], loss2[last], batch / (ms / 1000), r["pytorch_tokens_per_s"], r["device"]
    }' "$work/pgolf.log" "$work/torch.log"
