#!/usr/bin/env bash
# Evaluation throughput on one GPU: plain (stride = seq_len), sliding window (stride 64) and
# sliding + score-first TTT (default TTT settings) over the same TOKENS targets, each timed,
# with tokens/s and the extrapolation to the challenge's full val split on 8 GPUs. The model
# is record-shaped with a random init (time does not depend on the weights) unless
# --artifact A or --checkpoint C is given; tokens are synthetic unless --val DIR is given.
# Extra arguments go to `pgolf bench eval` (see its --help). The last line is RESULT ...;
# docs/benchmarks/eval.md holds a run.
#   scripts/bench_eval.sh                       # 1M synthetic tokens, random record model
#   TOKENS=4194304 scripts/bench_eval.sh --artifact final.art --val ../shared/data
set -euo pipefail
PGOLF=${PGOLF:-build/pgolf}
exec "$PGOLF" bench eval --tokens "${TOKENS:-1048576}" "$@"
