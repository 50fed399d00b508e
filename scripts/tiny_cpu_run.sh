#!/usr/bin/env bash
# The default job end to end on the CPU: `pgolf train` with no flags (the tiny preset on the
# embedded Austen sample), the unigram baseline, pack, and eval of the artifact alone.
# Writes the full output to docs/benchmarks/tiny_cpu.md (or $1).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/benchmarks/tiny_cpu.md}
run=$(mktemp -d)
log=$(mktemp)
{
  echo "# Tiny default run on the CPU"
  echo
  echo "Command: \`scripts/tiny_cpu_run.sh\` on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(date -u +%F)."
  echo
  echo '```'
  echo "\$ build/pgolf bpb --tokenizer data/sample/tokenizer.model --val data/sample"
  build/pgolf bpb --tokenizer data/sample/tokenizer.model --val data/sample
  echo "\$ build/pgolf train --out $run"
  build/pgolf train --out "$run"
  echo "\$ build/pgolf pack $run/checkpoint.bin -o $run/model.art"
  build/pgolf pack "$run/checkpoint.bin" -o "$run/model.art"
  echo "\$ build/pgolf eval --artifact $run/model.art --stride 64"
  build/pgolf eval --artifact "$run/model.art" --stride 64
  echo '```'
} 2>&1 | tee "$log"
mkdir -p "$(dirname "$out")"
mv "$log" "$out"
rm -rf "$run"
